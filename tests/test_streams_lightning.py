"""SamaDataModule under a real Lightning Trainer: resume from a checkpoint and 2-process DDP.

The unit tests in test_streams.py drive the datamodule by hand; these check the contract with
Lightning itself: the sampler is found on ``trainer.lightning_module``, the start index comes
from the restored ``global_step * accumulate_grad_batches`` (Lightning restores the checkpoint
before it builds and iterates the training loader), and DDP ranks read disjoint samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import Dataset

from datamodules.streams import SamaDataModule
from tasks.sampler import TaskSampler


class NumberedClips(Dataset):
    """``size`` clips whose pixels all hold ``base + index``."""

    def __init__(self, size: int, base: int = 0) -> None:
        self.size, self.base = size, base

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        value = float(self.base + index)
        return {"video": torch.full((3, 1, 2, 2), value), "caption": "", "path": str(index)}


class NumberedPairs(NumberedClips):
    def __getitem__(self, index: int) -> dict:
        value = torch.full((3, 1, 2, 2), float(self.base + index))
        return {"source": value, "target": -value, "instruction": "", "id": "", "category": ""}


class Recorder(pl.LightningModule):
    """Records ``(index, task, sample ids)`` of every training batch; one parameter to step."""

    def __init__(self, record: Path | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.task_sampler = TaskSampler(
            {"recon": 2.0, "edit": 1.0}, {"recon": "clips", "edit": "video_pairs"}, seed=7
        )
        self.record = record
        self.seen: list[tuple[int, str, list[int]]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pixels = batch["video"] if batch["stream"] == "clips" else batch["source"]
        ids = [int(v) for v in pixels[:, 0, 0, 0, 0]]
        self.seen.append((batch["index"], batch["task"], ids))
        return (self.weight - pixels.mean()).square()

    def on_train_end(self) -> None:
        if self.record is not None:
            path = self.record / f"rank{self.global_rank}.json"
            path.write_text(json.dumps(self.seen))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _datamodule() -> SamaDataModule:
    return SamaDataModule(
        clips=[NumberedClips(13)], video_pairs=[NumberedPairs(7, base=100)], batch_size=2, seed=3
    )


def _trainer(root: Path, max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_from_a_checkpoint_continues_the_batch_sequence(
    tmp_path: Path, accumulate: int
) -> None:
    steps, split = 6, 3
    full = Recorder()
    _trainer(tmp_path / "full", steps, accumulate_grad_batches=accumulate).fit(full, _datamodule())
    assert [index for index, _, _ in full.seen] == list(range(steps * accumulate))

    first = Recorder()
    trainer = _trainer(tmp_path / "a", split, accumulate_grad_batches=accumulate)
    trainer.fit(first, _datamodule())
    checkpoint = tmp_path / "split.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert torch.load(checkpoint, weights_only=False)["SamaDataModule"]["next_index"] == (
        split * accumulate
    )

    resumed = Recorder()
    _trainer(tmp_path / "b", steps, accumulate_grad_batches=accumulate).fit(
        resumed, _datamodule(), ckpt_path=checkpoint
    )
    assert first.seen + resumed.seen == full.seen


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_samples_in_the_same_task_order(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, 4, devices=2, strategy="ddp_spawn", use_distributed_sampler=True)
    trainer.fit(Recorder(record=tmp_path), _datamodule())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(i, task) for i, task, _ in ranks[0]] == [(i, task) for i, task, _ in ranks[1]]
    assert [task for _, task, _ in ranks[0]] == Recorder().task_sampler.sequence(0, 4)
    for i in range(4):
        assert set(ranks[0][i][2]).isdisjoint(ranks[1][i][2])
