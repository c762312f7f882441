"""Progress bars that count optimizer steps for step-budgeted training on an endless stream.

SamaDataModule serves an endless stream, and the configs budget training with
``trainer.max_steps`` (no ``max_epochs``). Lightning's own bars assume epochs: their total is
the steps *remaining* when the epoch started, while the position is the absolute batch index, and
the rich bar titles itself ``Epoch 0/-2``. After a resume from step 4200 of 9000 they read
``9000/4799``. The bars here show ``Training <batch>/<max_steps x accumulation>``, which stays
right across resumes. With an epoch budget or a finite loader they behave like Lightning's.

:class:`SamaCLI <sama.cli.SamaCLI>` puts one in place of the default bar; a progress bar named in
``trainer.callbacks`` is kept as it is.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

TRAIN_DESCRIPTION = "Training"


def step_total(trainer: pl.Trainer) -> int | None:
    """Training batches of the whole run when it is budgeted in steps on an endless loader.

    That is ``max_steps * accumulate_grad_batches`` (batch indices count micro-batches); ``None``
    when the run has an epoch budget, no step budget, or a loader of finite length.
    """
    if trainer.max_epochs not in (None, -1) or trainer.max_steps is None or trainer.max_steps <= 0:
        return None
    if not math.isinf(trainer.num_training_batches):
        return None
    return trainer.max_steps * trainer.accumulate_grad_batches


class _StepTotal(ProgressBar):
    """The training total of :func:`step_total`, else Lightning's."""

    @property
    def total_train_batches(self) -> int | float:
        total = step_total(self.trainer)
        return super().total_train_batches if total is None else total


class StepRichProgressBar(_StepTotal, RichProgressBar):
    """:class:`~lightning.pytorch.callbacks.RichProgressBar` counting the whole step budget."""

    def _get_train_description(self, current_epoch: int) -> str:
        if step_total(self.trainer) is None:
            return super()._get_train_description(current_epoch)
        # pad like Lightning does, so the bar does not jump when validation starts
        return TRAIN_DESCRIPTION.ljust(len(self.validation_description))


class StepTQDMProgressBar(_StepTotal, TQDMProgressBar):
    """:class:`~lightning.pytorch.callbacks.TQDMProgressBar` counting the whole step budget."""

    def on_train_start(self, trainer: pl.Trainer, *args: object) -> None:
        # a run resumed mid-epoch gets no on_train_epoch_start: set the total here too
        super().on_train_start(trainer, *args)
        self._count_steps(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._count_steps(trainer)

    def _count_steps(self, trainer: pl.Trainer) -> None:
        total = step_total(trainer)
        if total is not None and self.train_progress_bar is not None:
            self.train_progress_bar.total = total
            self.train_progress_bar.set_description(TRAIN_DESCRIPTION)


def step_counting(bar: ProgressBar) -> ProgressBar:
    """The step-counting counterpart of one of Lightning's default bars (else ``bar`` itself)."""
    if type(bar) is RichProgressBar:
        return StepRichProgressBar()
    if type(bar) is TQDMProgressBar:
        return StepTQDMProgressBar()
    return bar
