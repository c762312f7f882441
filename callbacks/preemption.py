"""PreemptionCheckpoint: SIGTERM / SIGINT during ``fit`` save the current step and exit non-zero.

Lightning's signal connector already turns SIGTERM into a clean stop: it sets
``trainer.received_sigterm`` and the training loop raises ``SIGTERMException`` once the step
in flight has finished (and, under DDP, on every rank). This callback adds what a scheduler
needs on top of it:

- SIGINT (Ctrl-C) takes the same path as SIGTERM (finish the step, save, stop); a second
  SIGINT stops at once (Lightning's KeyboardInterrupt handling; nothing more is saved, the last
  checkpoint on disk stays intact);
- on that ``SIGTERMException`` the whole training state of the finished step is saved to the
  run's ``last.ckpt`` (the file ``--ckpt_path last`` resumes from), so a resumed run continues
  bit-identically;
- :attr:`stopped_by` records the signal, so ``sama fit`` exits ``128 + signal`` (143 for
  SIGTERM, 130 for SIGINT) instead of 0: a preempted run is not reported as finished.

SLURM's auto-requeue (``SLURMEnvironment(auto_requeue=True)``, the default under SLURM) is left
as Lightning does it: the requeue signal (``--signal=SIGUSR1@90``) saves an HPC checkpoint and
requeues the job; the SIGTERM SLURM then sends reaches this callback (see docs/runs.md).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["PreemptionCheckpoint", "last_checkpoint_path"]


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """The ``last.ckpt`` of the trainer's first ``ModelCheckpoint`` (or of its default folder)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
        return Path(callback.dirpath) / name
    root = Path(trainer.log_dir or trainer.default_root_dir)
    return root / "checkpoints" / "last.ckpt"


class PreemptionCheckpoint(pl.Callback):
    """Save ``last.ckpt`` of the finished step when SIGTERM or SIGINT stops a fit.

    Attributes:
        stopped_by: the signal that stopped the fit (``signal.SIGTERM`` / ``signal.SIGINT``),
            or None.
        saved: the checkpoint written on that stop, or None.
    """

    def __init__(self) -> None:
        self.stopped_by: signal.Signals | None = None
        self.saved: Path | None = None
        self._previous_sigint: Any = None
        self._installed = False

    # ------------------------------------------------------------------ signals
    def _on_sigint(self, trainer: pl.Trainer) -> Any:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stopped_by is not None or trainer.received_sigterm:
                raise KeyboardInterrupt  # second signal: stop now
            self.stopped_by = signal.SIGINT
            print(
                "sama fit: SIGINT received; finishing the current step and saving a checkpoint "
                "(press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            terminate = signal.getsignal(signal.SIGTERM)
            if callable(terminate):
                terminate(signum, frame)  # Lightning's SIGTERM handlers (DDP broadcast, ...)
            if not trainer.received_sigterm:
                trainer._signal_connector.received_sigterm = True

        return handler

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_sigint = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint(trainer))
        self._installed = True

    def _restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
            self._installed = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    # ------------------------------------------------------------------ the stop
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.stopped_by is None:
            self.stopped_by = signal.SIGTERM
        self._restore()
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # a full resumable checkpoint
        self.saved = path
        exception.code = 128 + int(self.stopped_by)  # `sama fit` exits 143 / 130, not 0
        if trainer.is_global_zero:
            print(
                f"sama fit: stopped by {self.stopped_by.name} after step {trainer.global_step}; "
                f"saved {path}; resume with --ckpt_path last",
                file=sys.stderr,
                flush=True,
            )
