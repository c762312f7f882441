"""Benchmark sources and `sama benchmark score` on generated videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.eval_sets import EditVerseBench, ManifestEvalSet
from sama.evaluation.scorer import align_prediction, benchmark_main, score_predictions
from sama.io import write_video


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
    results_path, report = score_predictions(ManifestEvalSet(str(manifest)), preds, out)
    results = json.loads(results_path.read_text())
    overall = results["overall"]
    region = {s: overall[s]["metrics"]["edit_region_psnr"]["mean"] for s in results["systems"]}
    assert region["oracle"] > region["model"] > region["identity"] + 10
    assert overall["identity"]["metrics"]["preservation_psnr"]["mean"] >= 99
    html = report.read_text()
    assert "recolor" in html and 'src="http' not in html and "data:image/png;base64" in html
    # resume: a second run scores nothing new (partial log unchanged)
    before = (out / "results.partial.jsonl").read_text()
    score_predictions(ManifestEvalSet(str(manifest)), preds, out)
    assert (out / "results.partial.jsonl").read_text() == before
    # other settings (here: another checkpoint hash): the old samples are set aside, not mixed in
    score_predictions(ManifestEvalSet(str(manifest)), preds, out, checkpoint_hash="f" * 64)
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
