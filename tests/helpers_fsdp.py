"""Callbacks of the FSDP tests: per-rank losses, tasks and EMA shards written to files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from callbacks.ema import ShardedEMA


class RankRecorder(pl.Callback):
    """Appends ``{"step", "task", "loss"}`` per training step to ``<out_dir>/rank<r>.jsonl``; at
    the end of fit saves this rank's ShardedEMA tensors to ``<out_dir>/rank<r>_ema.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.out_dir.mkdir(parents=True, exist_ok=True)
        line = {"step": trainer.global_step, "task": batch["task"], "loss": float(loss)}
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, ShardedEMA):
                tensors = {k: v.detach().cpu().clone() for k, v in callback.ema_tensors.items()}
                torch.save(tensors, self.out_dir / f"rank{trainer.global_rank}_ema.pt")
