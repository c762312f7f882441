"""Step-counting progress bars: right totals across a resume, and SamaCLI's choice of bar."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
    TQDMProgressBar,
)
from torch.utils.data import DataLoader, IterableDataset

from callbacks.progress import StepRichProgressBar, StepTQDMProgressBar, step_counting
from sama.cli import SamaCLI

ROOT = Path(__file__).resolve().parents[1]


class Endless(IterableDataset):
    """An endless stream of ``(4,)`` float vectors, like SamaDataModule's training stream."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in itertools.count():
            yield torch.full((4,), float(i % 7))


class Linear(pl.LightningModule):
    def __init__(self, finite: bool = False) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.finite = finite

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self) -> DataLoader:
        if self.finite:
            return DataLoader(torch.ones(6, 4), batch_size=2)
        return DataLoader(Endless(), batch_size=2)


def shown(bar: ProgressBar) -> tuple[str, float, float]:
    """``(description, position, total)`` of the training bar as it is drawn now."""
    if isinstance(bar, RichProgressBar):
        task = bar.progress.tasks[bar.train_progress_bar_id]
        return task.description.strip(), task.completed, task.total
    tqdm = bar.train_progress_bar
    return tqdm.desc.rstrip(": "), tqdm.n, tqdm.total


class Snapshots(Callback):
    """What the progress bar shows after each training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        self.seen.append(shown(trainer.progress_bar_callback))


def fit(tmp_path: Path, bar: ProgressBar, max_steps: int, ckpt_path: str | None = None, **kw):
    snapshots = Snapshots()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        max_steps=max_steps,
        callbacks=[bar, snapshots, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        **kw,
    )
    trainer.fit(Linear(finite=kw.get("max_epochs") is not None), ckpt_path=ckpt_path)
    return snapshots.seen


@pytest.mark.parametrize("make_bar", [StepRichProgressBar, StepTQDMProgressBar])
def test_a_resumed_step_budget_counts_to_max_steps(make_bar: type, tmp_path: Path) -> None:
    first = fit(tmp_path, make_bar(), max_steps=4)
    assert first[-1] == ("Training", 4, 4)
    resumed = fit(tmp_path, make_bar(), max_steps=10, ckpt_path=str(tmp_path / "last.ckpt"))
    assert len(resumed) == 6
    assert resumed[-1] == ("Training", 10, 10)
    assert all(total == 10 for _, _, total in resumed)


def test_gradient_accumulation_counts_micro_batches(tmp_path: Path) -> None:
    seen = fit(tmp_path, StepTQDMProgressBar(), max_steps=3, accumulate_grad_batches=2)
    assert seen[-1] == ("Training", 6, 6)


@pytest.mark.parametrize("make_bar", [StepRichProgressBar, StepTQDMProgressBar])
def test_an_epoch_budget_is_left_to_lightning(make_bar: type, tmp_path: Path) -> None:
    seen = fit(tmp_path, make_bar(), max_steps=-1, max_epochs=2)
    assert [s[1:] for s in seen] == [(1, 3), (2, 3), (3, 3)] * 2
    assert seen[-1][0].startswith("Epoch 1")


def test_step_counting_keeps_bars_it_does_not_know() -> None:
    custom = type("Custom", (TQDMProgressBar,), {})()
    assert step_counting(custom) is custom
    assert type(step_counting(RichProgressBar())) is StepRichProgressBar
    assert type(step_counting(TQDMProgressBar())) is StepTQDMProgressBar


def _cli_bar(*args: str) -> ProgressBar | None:
    config = str(ROOT / "configs/tiny/pretrain.yaml")
    cli = SamaCLI(args=[f"--config={config}", *args], run=False, save_config_callback=None)
    return cli.trainer.progress_bar_callback


def test_sama_cli_swaps_only_the_default_bar() -> None:
    assert type(_cli_bar()) is StepRichProgressBar
    mine = _cli_bar(
        "--trainer.callbacks+=lightning.pytorch.callbacks.RichProgressBar",
        "--trainer.callbacks.leave=true",
    )
    assert type(mine) is RichProgressBar and mine._leave
    assert _cli_bar("--trainer.enable_progress_bar=false") is None
