"""Helpers of the run-reliability tests: a loss recorder callback and a checkpoint payload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class LossRecorder(pl.Callback):
    """Appends ``{"step": global_step, "loss": float}`` to ``path`` after every training step,
    one JSON line flushed at once (a killed run keeps the lines of its finished steps)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "loss": float(loss)}) + "\n")
            handle.flush()


def recorded(path: Path) -> list[dict]:
    """The lines a :class:`LossRecorder` wrote (none when the file does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Payload:
    """Unpickling this object creates ``marker`` (what a crafted checkpoint could do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))
