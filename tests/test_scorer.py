"""Benchmark sources and `sama benchmark score` on generated videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.eval_sets import EditVerseBench, ManifestEvalSet
from sama.evaluation.metrics import build_metrics
from sama.evaluation.scorer import (
    align_prediction,
    benchmark_main,
    eval_size,
    resize_mask,
    resize_video,
    score_edit,
    score_predictions,
)
from sama.files import sha256_file
from sama.io import read_video, write_video


def _scene(tmp_path, n: int = 2):
    """Sources with a square; targets recolour it; masks mark the square."""
    lines = []
    for i in range(n):
        t, h, w = 5, 32, 32
        bg = torch.linspace(0, 255, w).round().to(torch.uint8).view(1, 1, w, 1).expand(t, h, w, 3)
        source = bg.clone()
        target = bg.clone()
        mask = np.zeros((t, h, w), bool)
        for f in range(t):
            y0, x0 = 8, 4 + 3 * f
            source[f, y0 : y0 + 10, x0 : x0 + 10] = torch.tensor([200, 30, 30], dtype=torch.uint8)
            target[f, y0 : y0 + 10, x0 : x0 + 10] = torch.tensor([30, 30, 200], dtype=torch.uint8)
            mask[f, y0 : y0 + 10, x0 : x0 + 10] = True
        write_video(tmp_path / f"s{i}.mp4", source, 8, crf=0)
        write_video(tmp_path / f"t{i}.mp4", target, 8, crf=0)
        np.savez_compressed(tmp_path / f"m{i}.npz", mask=mask)
        lines.append(
            {
                "id": f"x{i}",
                "source": f"s{i}.mp4",
                "target": f"t{i}.mp4",
                "mask": f"m{i}.npz",
                "instruction": "make the red square blue",
                "category": "recolor",
            }
        )
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return tmp_path / "bench.jsonl"


def test_manifest_errors_name_file_and_line(tmp_path) -> None:
    (tmp_path / "b.jsonl").write_text('{"id": "a", "source": "a.mp4", "instruction": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: invalid JSON"):
        ManifestEvalSet(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.jsonl").write_text('{"id": "a", "source": "a.mp4"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:1: missing field 'instruction'"):
        ManifestEvalSet(str(tmp_path / "c.jsonl"))


def test_align_prediction_resizes_and_trims() -> None:
    edit = torch.zeros(7, 16, 16, 3, dtype=torch.uint8)
    source = torch.zeros(5, 32, 24, 3, dtype=torch.uint8)
    edit2, source2, notes = align_prediction(edit, source)
    assert edit2.shape == (5, 32, 24, 3) and source2.shape == (5, 32, 24, 3) and len(notes) == 2


def test_scoring_orders_identity_model_oracle_and_resumes(tmp_path) -> None:
    manifest = _scene(tmp_path)
    preds = tmp_path / "preds"
    preds.mkdir()
    # a decent editor: the target with a little noise
    for i in range(2):
        from sama.io import read_video

        target, _ = read_video(tmp_path / f"t{i}.mp4")
        noisy = (target.int() + torch.randint(-6, 7, target.shape)).clamp(0, 255).to(torch.uint8)
        write_video(preds / f"x{i}.mp4", noisy, 8, crf=0)
    out = tmp_path / "out"
    results_path, report = score_predictions(ManifestEvalSet(str(manifest)), preds, out, workers=0)
    results = json.loads(results_path.read_text())
    overall = results["overall"]
    region = {s: overall[s]["metrics"]["edit_region_psnr"]["mean"] for s in results["systems"]}
    assert region["oracle"] > region["model"] > region["identity"] + 10
    assert overall["identity"]["metrics"]["preservation_psnr"]["mean"] >= 99
    html = report.read_text()
    assert "recolor" in html and 'src="http' not in html and "data:image/png;base64" in html
    # resume: a second run scores nothing new (partial log unchanged)
    before = (out / "results.partial.jsonl").read_text()
    score_predictions(ManifestEvalSet(str(manifest)), preds, out, workers=0)
    assert (out / "results.partial.jsonl").read_text() == before
    # other settings (here: another checkpoint hash): the old samples are set aside, not mixed in
    score_predictions(
        ManifestEvalSet(str(manifest)), preds, out, checkpoint_hash="f" * 64, workers=0
    )
    stale = list(out.glob("results.partial.*.stale.jsonl"))
    assert len(stale) == 1 and stale[0].read_text() == before
    again = json.loads(results_path.read_text())
    assert again["checkpoint_sha256"] == "f" * 64
    assert len([r for r in again["samples"] if r["system"] == "model"]) == 2
    assert any("not reused" in n for n in again["notices"])


def test_missing_prediction_is_reported(tmp_path, capsys) -> None:
    manifest = _scene(tmp_path, n=2)
    (tmp_path / "empty").mkdir()  # x0 predicted, x1 missing (all missing is an error)
    (tmp_path / "empty" / "x0.mp4").write_bytes((tmp_path / "s0.mp4").read_bytes())
    code = benchmark_main(
        [
            "score",
            "--manifest",
            str(manifest),
            "--predictions",
            str(tmp_path / "empty"),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert any("1 prediction(s) missing" in n and "x1" in n for n in results["notices"])
    assert set(results["systems"]) == {"model", "identity", "oracle"}


def test_cli_error_is_one_line(tmp_path, capsys) -> None:
    code = benchmark_main(
        [
            "score",
            "--manifest",
            str(tmp_path / "nope.jsonl"),
            "--predictions",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nope.jsonl" in err and "\n" not in err


def test_editversebench_import(tmp_path) -> None:
    write_video(tmp_path / "v.mp4", torch.zeros(5, 16, 16, 3, dtype=torch.uint8), 12)
    data = {
        "7": {
            "<text>": "<video1> Turn the car red <video1>",
            "<video1>": "v.mp4",
            "direction": "horizontal",
            "target_prompt": "a red car",
            "type": "color",
            "source_prompt": "a car",
        }
    }
    (tmp_path / "test.json").write_text(json.dumps(data))
    bench = EditVerseBench(str(tmp_path / "test.json"))
    item = bench.item(0)
    assert item.id == "7" and item.instruction == "Turn the car red"
    assert item.category == "color" and item.caption == "a red car" and item.target is None
    assert item.extra["direction"] == "horizontal" and item.fps == pytest.approx(12)
    assert not bench.has_target


def _noisy_predictions(tmp_path, n: int = 2, folder: str = "preds"):
    from sama.io import read_video

    preds = tmp_path / folder
    preds.mkdir()
    for i in range(n):
        target, _ = read_video(tmp_path / f"t{i}.mp4")
        gen = torch.Generator().manual_seed(i)
        noise = torch.randint(-6, 7, target.shape, generator=gen)
        write_video(preds / f"x{i}.mp4", (target.int() + noise).clamp(0, 255).to(torch.uint8), 8)
    return preds


def _metrics_by_key(results_path) -> dict:
    results = json.loads(results_path.read_text())
    return {(s["id"], s["system"]): s for s in results["samples"]}


def test_eval_size_downscales_the_short_side_and_never_upscales() -> None:
    assert eval_size(464, 832, 256) == (256, 459)
    assert eval_size(924, 2236, 256) == (256, 619)
    assert eval_size(1280, 720, 256) == (455, 256)  # portrait
    assert eval_size(256, 700, 256) == (256, 700)  # already there
    assert eval_size(32, 48, 256) == (32, 48)  # smaller: kept, not upscaled
    assert eval_size(464, 832, 0) == (464, 832) and eval_size(464, 832, None) == (464, 832)


def test_resize_mask_keeps_coverage_and_empty_or_full_masks() -> None:
    mask = torch.zeros(2, 40, 60, dtype=torch.bool)
    mask[:, 10:30, 15:45] = True
    small = resize_mask(mask, (20, 30))
    assert small.dtype == torch.float32 and small.shape == (2, 20, 30)
    assert small.mean().item() == pytest.approx(mask.float().mean().item(), abs=1e-6)
    assert resize_mask(torch.zeros(1, 40, 60, dtype=torch.bool), (20, 30)).max() == 0
    assert resize_mask(torch.ones(1, 40, 60, dtype=torch.bool), (20, 30)).min() == 1
    video = torch.randint(0, 256, (3, 40, 60, 3), dtype=torch.uint8)
    assert resize_video(video, (40, 60)) is video  # same size: untouched
    assert resize_video(video, (20, 30)).shape == (3, 20, 30, 3)


def test_inputs_at_or_below_the_eval_resolution_score_exactly_as_native(tmp_path) -> None:
    bench = ManifestEvalSet(str(_scene(tmp_path, n=1)))
    item = bench.item(0)
    metrics, _ = build_metrics(has_target=True, has_mask=True)
    edit = item.target.flip(-1)  # some edit (channel order reversed)
    native = score_edit(metrics, item, edit)
    assert score_edit(metrics, item, edit, eval_short_side=32) == native  # 32x32: at the size
    assert score_edit(metrics, item, edit, eval_short_side=256) == native  # below it
    shrunk = score_edit(metrics, item, edit, eval_short_side=16)  # above it: downscaled
    assert shrunk != native and shrunk["psnr"] == pytest.approx(native["psnr"], abs=3.0)


def test_larger_inputs_are_scored_and_recorded_at_the_eval_resolution(tmp_path) -> None:
    manifest = _scene(tmp_path)
    preds = _noisy_predictions(tmp_path)
    bench = ManifestEvalSet(str(manifest))
    out = tmp_path / "out"
    results_path, _ = score_predictions(bench, preds, out, eval_short_side=16, workers=0)
    results = json.loads(results_path.read_text())
    assert results["config"]["eval_short_side"] == 16
    assert {tuple(s["eval_size"]) for s in results["samples"]} == {(16, 16)}
    region = {
        s: results["overall"][s]["metrics"]["edit_region_psnr"]["mean"] for s in results["systems"]
    }
    assert region["oracle"] > region["model"] > region["identity"] + 10  # still discriminates
    # the evaluation resolution is part of the resume guard: native scores are not mixed in
    before = (out / "results.partial.jsonl").read_text()
    results_path, _ = score_predictions(bench, preds, out, eval_short_side=0, workers=0)
    stale = list(out.glob("results.partial.*.stale.jsonl"))
    assert len(stale) == 1 and stale[0].read_text() == before
    native = json.loads(results_path.read_text())
    assert {tuple(s["eval_size"]) for s in native["samples"]} == {(32, 32)}
    assert native["config"]["eval_short_side"] == 0


def test_workers_give_the_in_process_records_and_resume(tmp_path) -> None:
    manifest = _scene(tmp_path, n=3)
    preds = _noisy_predictions(tmp_path, n=3)
    bench = ManifestEvalSet(str(manifest))
    serial, _ = score_predictions(bench, preds, tmp_path / "serial", workers=0)
    parallel, _ = score_predictions(bench, preds, tmp_path / "parallel", workers=2)
    a, b = _metrics_by_key(serial), _metrics_by_key(parallel)
    assert list(a) == list(b)  # same records, in the same (benchmark) order
    for key, record in a.items():
        assert record.get("prediction_sha256") == b[key].get("prediction_sha256")
        for name, value in record["metrics"].items():
            assert b[key]["metrics"][name] == pytest.approx(value, abs=1e-6), (key, name)
    log = tmp_path / "parallel" / "results.partial.jsonl"
    keys = [(r["id"], r["system"]) for r in map(json.loads, log.read_text().splitlines())]
    assert keys == [(f"x{i}", s) for i in range(3) for s in ("identity", "oracle", "model")]
    # resume with workers: nothing new is scored; a changed prediction alone is scored again
    before = log.read_text()
    score_predictions(bench, preds, tmp_path / "parallel", workers=2)
    assert log.read_text() == before
    source, _ = read_video(tmp_path / "s1.mp4")
    write_video(preds / "x1.mp4", source, 8, crf=0)  # x1 now predicts (about) "no edit"
    again, _ = score_predictions(bench, preds, tmp_path / "parallel", workers=2)
    added = log.read_text()[len(before) :].splitlines()
    assert [(r["id"], r.get("system")) for r in map(json.loads, added)] == [("x1", "model")] * 2
    rescored = _metrics_by_key(again)[("x1", "model")]
    assert rescored["prediction_sha256"] == sha256_file(preds / "x1.mp4")
    assert rescored["prediction_sha256"] != a[("x1", "model")]["prediction_sha256"]
    assert rescored["metrics"]["psnr"] != a[("x1", "model")]["metrics"]["psnr"]


def test_cli_takes_eval_short_side_and_workers(tmp_path) -> None:
    manifest = _scene(tmp_path, n=1)
    preds = _noisy_predictions(tmp_path, n=1)
    out = tmp_path / "o"
    argv = ["score", "--manifest", str(manifest), "--predictions", str(preds), "--output", str(out)]
    assert benchmark_main([*argv, "--eval-short-side", "16", "--workers", "0"]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["eval_short_side"] == 16
    with pytest.raises(SystemExit):
        benchmark_main([*argv, "--workers", "-1"])
