"""The Evaluator callback (sama test / predict on a benchmark), the one scorer shared with the
EditMonitor, and the one sampling-settings object of EvalDataModule / EditMonitor."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers_data import tiny_model_config

from callbacks.edit_monitor import EditMonitor
from datamodules.eval_sets import EvalDataModule, EvalItem, SynthEditEvalSet
from sama.cli import _model_from_checkpoint
from sama.evaluation.evaluator import Evaluator
from sama.evaluation.metrics import EditMetric
from sama.evaluation.scorer import item_texts, score_edit
from sama.flow import SamplingSettings
from sama.module import SamaModule


def _module() -> SamaModule:
    config = tiny_model_config(
        tasks=[{"class_path": "tasks.InstructionEditing", "init_args": {"stream": "video_pairs"}}],
        sample_steps=2,
        guidance_scale=1.0,
    )
    return SamaModule.from_config(config)


def _bench(num: int = 2) -> SynthEditEvalSet:
    return SynthEditEvalSet(num=num, size=(16, 16), frames=5)


class TextRecorder(EditMetric):
    """Scores 1.0 and remembers the texts each edit was scored against."""

    higher_is_better = True
    requires = ("texts",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def _score(self, edit: torch.Tensor, *, texts: Any, **_: Any) -> torch.Tensor:
        self.seen.append(list(texts))
        return torch.ones(edit.shape[0], dtype=torch.float64)


def test_item_texts_prefer_the_target_caption() -> None:
    source = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with_caption = EvalItem("a", "make it red", source, caption="a red square")
    assert item_texts(with_caption) == ["a red square"]
    assert item_texts(EvalItem("b", "make it red", source)) == ["make it red"]


def test_edit_monitor_scores_against_the_same_text_as_sama_test(monkeypatch) -> None:
    """CLIP text alignment must compare an edit with the target caption (as ``sama test``
    does), not with the instruction: the monitor goes through the shared ``score_edit``."""
    bench = _bench(2)
    recorder = TextRecorder()
    monkeypatch.setattr("callbacks.edit_monitor.build_metrics", lambda **_: ({"rec": recorder}, []))
    monitor = EditMonitor(benchmark=bench, num_samples=2, sampling={"steps": 1}, write_videos=False)
    trainer = SimpleNamespace(log_dir=None, default_root_dir="unused", logger=None)
    means = monitor._evaluate(trainer, _module(), step=1)
    assert means["bench/rec"] == 1.0
    captions = [[bench.item(i).caption] for i in range(2)]
    assert all(c[0] and c[0] != bench.item(i).instruction for i, c in enumerate(captions))
    # model edits and the identity baseline, each scored against the caption
    assert recorder.seen[0::2] == captions and recorder.seen[1::2] == captions

    scorer_recorder = TextRecorder()
    item = bench.item(0)
    score_edit({"rec": scorer_recorder}, item, item.source)
    assert scorer_recorder.seen == [captions[0]]


def test_sampling_overrides_the_models_defaults_and_names_bad_fields() -> None:
    data = EvalDataModule(_bench(), sampling={"steps": 3, "guidance": 2.0}, seed=7)
    defaults = SamplingSettings(steps=50, guidance=5.0, shift=3.0, seed=0)
    assert data.sampling_settings(defaults) == SamplingSettings(
        steps=3, guidance=2.0, shift=3.0, seed=7
    )
    with pytest.raises(ValueError, match=r"EvalDataModule.sampling: .*unknown field.*'stpes'"):
        EvalDataModule(_bench(), sampling={"stpes": 3})
    with pytest.raises(ValueError, match="seed_everything"):
        EvalDataModule(_bench(), sampling={"seed": 3})
    with pytest.raises(ValueError, match=r"EditMonitor.sampling: .*'shfit'"):
        EditMonitor(benchmark=_bench(), sampling={"shfit": 2.0})


def _trainer(tmp_path: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def test_evaluator_edits_scores_reports_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    module = _module()
    data = EvalDataModule(_bench(2), output_dir=str(out), sampling={"steps": 1})
    evaluator = Evaluator()
    _trainer(tmp_path, [evaluator]).test(module, datamodule=data)
    results = json.loads((out / "results.json").read_text())
    assert results["systems"] == ["model", "identity", "oracle"]
    assert results["config"]["steps"] == 1 and results["config"]["guidance"] == 1.0
    assert results["overall"]["model"]["count"] == 2
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in (out / "edits").glob("*.mp4")) == [
        f"{data.benchmark.item(i).id}.mp4" for i in range(2)
    ]
    assert evaluator.paths == (out / "results.json", out / "report.html")
    # a re-run with the same settings skips the logged samples
    logged = (out / "results.partial.jsonl").read_text()
    _trainer(tmp_path, [Evaluator()]).test(module, datamodule=data)
    assert (out / "results.partial.jsonl").read_text() == logged


def test_without_an_evaluator_benchmark_items_are_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    data = EvalDataModule(_bench(1), output_dir=str(out), sampling={"steps": 1})
    _trainer(tmp_path, []).test(_module(), datamodule=data)
    assert not (out / "results.json").exists()


def test_evaluator_writes_predictions(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    data = EvalDataModule(_bench(2), output_dir=str(out), sampling={"steps": 1})
    _trainer(tmp_path, [Evaluator()]).predict(_module(), datamodule=data)
    assert len(list((out / "predictions").glob("*.mp4"))) == 2


def test_cli_passes_the_checkpoint_model_inline(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "encoders.json").write_text(
        json.dumps(
            {k: {"class_path": f"x.{k}"} for k in ("codec", "text_encoder", "semantic_encoder")}
        )
    )
    args = _model_from_checkpoint(["test", "--config", "c.yaml", f"--ckpt_path={export}"])
    assert args[0] == "test" and args[2:] == ["--config", "c.yaml"]
    assert args[1].startswith("--model=")
    model = json.loads(args[1].removeprefix("--model="))
    assert model["pretrained"] == str(export) and model["codec"] == {"class_path": "x.codec"}
