"""BrokenFileReport: collect the samples the datamodule skipped and list them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist

from sama.files import atomic_write_text

__all__ = ["BrokenFileReport"]

logger = logging.getLogger(__name__)

# broken files listed on the console (all of them go to the file)
_SHOWN = 50


class BrokenFileReport(pl.Callback):
    """Aggregates ``batch["skipped"]`` (``[path, reason]`` pairs) over training and validation.

    At the end of every training epoch, when new broken files were seen, it logs them and
    writes ``broken_files.txt`` (``path<TAB>times skipped<TAB>reason`` per line)
    to the trainer's log dir (``default_root_dir`` without a logger). At the end of a fit
    (finished or interrupted) it prints the whole summary to stderr if any file was skipped.
    Under DDP the ranks' lists are gathered and rank 0 writes the file. ``SamaCLI`` adds one
    to every trainer unless the config already has one.

    Attributes:
        broken: path -> ``(reason, times skipped)`` seen by this rank.
    """

    def __init__(self, filename: str = "broken_files.txt") -> None:
        self.filename = filename
        self.broken: dict[str, tuple[str, int]] = {}
        self._reported = 0

    def _collect(self, batch: Any) -> None:
        if not isinstance(batch, dict):
            return
        for path, reason in batch.get("skipped", ()):
            _, count = self.broken.get(path, (reason, 0))
            self.broken[path] = (reason, count + 1)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._collect(batch)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._collect(batch)

    def _gathered(self) -> dict[str, tuple[str, int]]:
        if not (dist.is_available() and dist.is_initialized()):
            return dict(self.broken)
        parts: list[dict[str, tuple[str, int]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.broken)
        merged: dict[str, tuple[str, int]] = {}
        for part in parts:
            for path, (reason, count) in (part or {}).items():
                merged[path] = (reason, merged.get(path, (reason, 0))[1] + count)
        return merged

    def report(self, trainer: pl.Trainer, final: bool = False, gather: bool = True) -> Path | None:
        """Log the broken files and write the list; returns the file written (rank 0), if any.

        ``final`` (the end of a fit, also an interrupted one): print the whole summary to
        stderr whenever any file was skipped, even if an epoch end already listed them.
        ``gather=False`` reports this rank's list only (after an exception other ranks may
        never reach the gather).
        """
        broken = self._gathered() if gather else dict(self.broken)
        if (len(broken) == self._reported and not (final and broken)) or not trainer.is_global_zero:
            self._reported = len(broken)
            return None
        self._reported = len(broken)
        lines = [f"{path}\t{count}\t{reason}" for path, (reason, count) in sorted(broken.items())]
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        target = folder / self.filename
        atomic_write_text(target, "\n".join(lines) + "\n")
        if final:
            shown = "\n".join(f"  {line}" for line in lines[:_SHOWN])
            more = f"\n  ... and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
            print(
                f"broken files: {len(broken)} file(s) could not be read and were skipped "
                f"(path, times skipped, reason; full list in {target}):\n{shown}{more}",
                file=sys.stderr,
                flush=True,
            )
        else:
            logger.warning(
                "%d broken file(s) skipped so far:\n%s", len(broken), "\n".join(lines[:_SHOWN])
            )
        return target

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report(trainer, final=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.report(trainer, final=True, gather=False)

    def state_dict(self) -> dict[str, Any]:
        return {"broken": {path: list(value) for path, value in self.broken.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.broken = {path: (reason, int(n)) for path, (reason, n) in state_dict["broken"].items()}
