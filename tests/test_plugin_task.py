"""A task defined OUTSIDE the project's packages (tests/plugin_pkg, a reverse-playback task
published through a `sama.tasks` entry point) is listed by `sama tasks` and trains, with no
project file changed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_cli import ROOT, sama, scalars
from test_task_contract import documented_plugin_code

from tasks import available_tasks, build_task

PLUGIN = ROOT / "tests" / "plugin_pkg"


def project_mentions_of_the_plugin() -> list[str]:
    """Project files (packages, configs, packaging) that name the plugin: must be none."""
    files = [ROOT / "pyproject.toml"]
    for folder in ("sama", "tasks", "datamodules", "callbacks", "configs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".yaml", ".toml"}]
    return [str(p) for p in files if "sama_reverse_playback" in p.read_text(errors="ignore")]


@pytest.fixture
def plugin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN))
    yield
    monkeypatch.undo()
    available_tasks(refresh=True)


def test_entry_point_task_is_registered_with_its_distribution(plugin_on_path: None) -> None:
    registry = available_tasks(refresh=True)
    info = registry["reverse_playback"]
    assert info.origin == "sama-reverse-playback"
    assert info.cls.__module__ == "sama_reverse_playback"
    assert registry["tube_shuffle"].origin == "built-in"

    task = build_task("reverse_playback", weight=2.0)
    video = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(2, 3, 5, 4, 4)
    sample = task.prepare({"video": video, "caption": ["a walk", ""]}, torch.Generator())
    assert sample.source[0, 0, :, 0, 0].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert torch.equal(sample.target, video) and sample.anchors.shape == (2, 1, 3, 4, 4)
    assert sample.source_reusable  # deterministic: the latent cache may keep it
    assert sample.instructions == [
        "[Play the video forwards.] a walk",
        "[Play the video forwards.]",
    ]
    assert task.weight == 2.0


def test_the_plugin_is_the_documented_example_verbatim() -> None:
    code = (PLUGIN / "sama_reverse_playback" / "__init__.py").read_text()
    documented = documented_plugin_code()
    assert "class ReversePlayback(ClipCorruptionTask)" in documented
    assert code.endswith("\n\n" + documented), "tests/plugin_pkg differs from docs/tasks.md"


def test_duplicate_task_names_name_both_origins(
    plugin_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dup_reverse.py").write_text(
        "from tasks import Task\n\n"
        "class Duplicate(Task):\n"
        "    name = 'reverse_playback'\n"
        "    def prepare(self, batch, generator):\n"
        "        raise AssertionError\n"
    )
    info = tmp_path / "sama_dup-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sama-dup\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sama.tasks]\nreverse = dup_reverse:Duplicate\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="reverse_playback") as error:
        available_tasks(refresh=True)
    assert "sama-reverse-playback" in str(error.value) and "sama-dup" in str(error.value)


def test_sama_tasks_lists_the_plugin_and_it_trains(tmp_path: Path) -> None:
    assert project_mentions_of_the_plugin() == []
    out, _ = sama("tasks", extra_path=str(PLUGIN))
    row = next(line for line in out.splitlines() if line.startswith("reverse_playback"))
    assert row.split()[1:4] == ["clips", "1", "sama-reverse-playback"]

    override = tmp_path / "reverse.yaml"
    override.write_text(
        "model:\n"
        "  tasks:\n"
        "    - class_path: sama_reverse_playback.ReversePlayback\n"
        "      init_args: {weight: 3}\n"
        "    - class_path: tasks.TubeShuffle\n"
        "      init_args: {weight: 1}\n"
        "data:\n"
        "  init_args:\n"
        "    image_pairs: null\n"
        "    val_image_pairs: null\n"
    )
    sama(
        "fit",
        "--config=configs/tiny/pretrain.yaml",
        f"--config={override}",
        "--trainer.max_steps=6",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        extra_path=str(PLUGIN),
    )
    losses = scalars(tmp_path / "pretrain", "train/reverse_playback/fm_loss")
    assert losses and all(math.isfinite(v) for v in losses)
