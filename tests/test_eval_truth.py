"""Evaluation outputs that never lie (issue 13): cached scores follow the prediction bytes,
sample ids never leave the output folder, and nothing to score is an error."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers_data import SmoothClips, SmoothPairs, tiny_model_config
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import SamaDataModule
from datamodules.eval_sets import EditVerseBench, EvalItem, ManifestEvalSet, item_file
from sama.evaluation.scorer import benchmark_main
from sama.files import sha256_file
from sama.io import write_video
from sama.module import SamaModule


def _clip(level: int) -> torch.Tensor:
    video = torch.full((5, 32, 32, 3), level, dtype=torch.uint8)
    video[:, 8:20, 8:20] = torch.tensor([200, 30, 30], dtype=torch.uint8)
    return video


def _manifest(tmp_path: Path, ids: list[str]) -> Path:
    write_video(tmp_path / "s.mp4", _clip(60), 8, crf=0)
    lines = [json.dumps({"id": i, "source": "s.mp4", "instruction": "make it blue"}) for i in ids]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _score(manifest: Path, predictions: Path, output: Path) -> int:
    return benchmark_main(
        [
            "score",
            f"--manifest={manifest}",
            f"--predictions={predictions}",
            f"--output={output}",
        ]
    )


def _model_samples(output: Path) -> dict[str, dict]:
    results = json.loads((output / "results.json").read_text())
    return {s["id"]: s for s in results["samples"] if s["system"] == "model"}


def test_changed_prediction_is_rescored_not_reported_from_cache(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, ["a", "b"])
    predictions, output = tmp_path / "pred", tmp_path / "out"
    write_video(predictions / "a.mp4", _clip(60), 8, crf=0)  # identical to the source
    write_video(predictions / "b.mp4", _clip(60), 8, crf=0)
    assert _score(manifest, predictions, output) == 0
    first = _model_samples(output)
    assert first["a"]["prediction_sha256"] == sha256_file(predictions / "a.mp4")

    write_video(predictions / "a.mp4", _clip(250), 8, crf=0)  # another editor's new output
    assert _score(manifest, predictions, output) == 0
    second = _model_samples(output)
    assert second["a"]["prediction_sha256"] == sha256_file(predictions / "a.mp4")
    assert second["a"]["metrics"] != first["a"]["metrics"]
    assert second["b"] == first["b"]  # unchanged file: the cached record is reused

    (predictions / "b.mp4").unlink()  # a prediction gone: its old score must not be reported
    assert _score(manifest, predictions, output) == 0
    assert set(_model_samples(output)) == {"a"}


@pytest.mark.parametrize("bad", ["../../x", "a/b", "/tmp/abs", "..", "a\\b", ""])
def test_unsafe_manifest_id_is_refused_naming_the_line(tmp_path: Path, bad: str) -> None:
    manifest = _manifest(tmp_path, ["ok"])
    manifest.write_text(
        manifest.read_text() + json.dumps({"id": bad, "source": "s.mp4", "instruction": "x"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"bench\.jsonl:2: id .* is not a safe file name"):
        ManifestEvalSet(str(manifest))


def test_unsafe_ids_are_refused_everywhere(tmp_path: Path) -> None:
    bench = tmp_path / "test.json"
    bench.write_text(json.dumps({"../evil": {"<text>": "x", "<video1>": "s.mp4"}}))
    with pytest.raises(ValueError, match=r"test\.json: entry '\.\./evil'.*not a safe file name"):
        EditVerseBench(str(bench))
    with pytest.raises(ValueError, match="not a safe file name"):
        EvalItem(id="../x", instruction="x", source=_clip(0))
    with pytest.raises(ValueError, match="not a safe file name"):
        item_file(tmp_path, "../x", ".mp4")
    assert item_file(tmp_path, "a.b", ".mp4") == tmp_path / "a.b.mp4"


def test_benchmark_with_unsafe_id_writes_nothing_outside_output(tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    work.mkdir()
    manifest = _manifest(work, ["../../escaped"])
    (work / "pred").mkdir()
    assert _score(manifest, work / "pred", work / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sama benchmark score: error: ") and "bench.jsonl:1" in err
    assert "\n" not in err
    assert not list(tmp_path.rglob("escaped*"))


def test_empty_manifest_is_an_error(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "bench.jsonl"
    manifest.write_text("\n")
    (tmp_path / "pred").mkdir()
    assert _score(manifest, tmp_path / "pred", tmp_path / "out") != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("sama benchmark score: error: ") and "no samples" in err
    assert "\n" not in err


def test_all_predictions_missing_is_an_error(tmp_path: Path, capsys) -> None:
    manifest = _manifest(tmp_path, ["a", "b"])
    (tmp_path / "pred").mkdir()
    assert _score(manifest, tmp_path / "pred", tmp_path / "out") != 0
    err = capsys.readouterr().err.strip().split("\r")[-1].splitlines()[-1]  # after tqdm's bar
    assert err.startswith("sama benchmark score: error: no usable prediction")
    assert "2 of 2 missing" in err and "\n" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_per_task_scalars_appear_only_at_steps_where_the_task_ran(tmp_path: Path) -> None:
    module = SamaModule.from_config(tiny_model_config())
    data = SamaDataModule(
        clips=[SmoothClips(8, 5, (16, 16))],
        image_pairs=[SmoothPairs(8, 1, (16, 16))],
        batch_size=2,
        val_batches_per_task=1,
    )
    steps = 12
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=steps,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="tb", version=0),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(steps))
    ran = {name: set() for name in module.tasks_by_name}
    for i in range(steps):  # one device, no accumulation: micro-batch i is step i
        ran[module.task_sampler.task_at(i)].add(i)
    assert sum(1 for name in ran if ran[name] and len(ran[name]) < steps) >= 2  # tasks alternate
    for name, where in ran.items():
        for kind in ("fm_loss", "sem_loss", "count"):
            tag = f"train/{name}/{kind}"
            logged = [e.step for e in events.Scalars(tag)] if tag in tags else []
            assert set(logged) == where, f"{tag} logged at {logged}, task ran at {sorted(where)}"
    for name, where in ran.items():
        if where:  # count is the task's running total at the steps it ran
            counts = [e.value for e in events.Scalars(f"train/{name}/count")]
            assert counts == [float(k) for k in range(1, len(where) + 1)]
