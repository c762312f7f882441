"""Edit a small fixed benchmark subset while training, so editing quality is visible live.

Every ``every_n_steps`` optimizer steps (and at the end of training) the callback builds an
:class:`~sama.pipeline.EditPipeline` around the module being trained, edits the first
``num_samples`` items of a benchmark (SynthEdit's held-out split by default) with a fixed seed,
and

- logs the mean of each metric as ``bench/<metric>`` (plus ``bench/identity/<metric>`` once, the
  floor to beat),
- logs a sample grid per item to TensorBoard (rows: source | edit | target, columns: frames),
- writes the edited clips as mp4 under ``<log_dir>/samples/step_<N>/``.

Only rank 0 edits; the others wait at a barrier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from datamodules.eval_sets import EvalSet, SynthEditEvalSet
from sama.evaluation.metrics import build_metrics
from sama.evaluation.scorer import score_edit
from sama.flow import SamplingSettings
from sama.io import write_video
from sama.pipeline import EditPipeline

__all__ = ["DEFAULT_SAMPLING", "EditMonitor", "sample_grid"]

DEFAULT_SAMPLING: dict[str, Any] = {"steps": 20, "guidance": 1.0, "seed": 0}
"""The monitor's sampler overrides unless ``sampling`` replaces them (fast, fixed seed)."""


def sample_grid(rows: list[Tensor], frames: int = 5, gap: int = 1) -> Tensor:
    """Stack uint8 ``(T, H, W, 3)`` clips as grid rows of ``frames`` evenly spaced frames.

    Returns a uint8 image ``(3, H_total, W_total)`` (CHW, as loggers expect).
    """
    t = min(r.shape[0] for r in rows)
    idx = torch.linspace(0, t - 1, steps=min(frames, t)).round().long()
    h, w = rows[0].shape[1:3]
    n = len(idx)
    grid = torch.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap, 3), 255, dtype=torch.uint8)
    for r, clip in enumerate(rows):
        for c, i in enumerate(idx.tolist()):
            y, x = r * (h + gap), c * (w + gap)
            grid[y : y + h, x : x + w] = clip[i]
    return grid.permute(2, 0, 1).contiguous()


class EditMonitor(pl.Callback):
    """Periodic editing benchmark during ``fit``.

    Args:
        benchmark: the items to edit (default: 4 SynthEdit held-out samples at 32x32x9).
        num_samples: how many items (the first ones, so every evaluation sees the same clips).
        every_n_steps: evaluation period in optimizer steps (0: only at the end of training).
        sampling: overrides of the model's sampler defaults, keyed as the fields of
            :class:`sama.flow.SamplingSettings` (default: 20 steps, guidance 1, seed 0; kept
            small for speed).
        write_videos: also write mp4s to the log directory.

    Edits come from :class:`~sama.pipeline.EditPipeline` and are scored by
    :func:`sama.evaluation.scorer.score_edit`, the scorer of ``sama test``.
    """

    def __init__(
        self,
        benchmark: EvalSet | None = None,
        num_samples: int = 4,
        every_n_steps: int = 500,
        sampling: dict[str, Any] | None = None,
        write_videos: bool = True,
    ) -> None:
        super().__init__()
        self.benchmark = benchmark or SynthEditEvalSet(num=num_samples)
        self.num_samples = min(num_samples, len(self.benchmark))
        self.every_n_steps = every_n_steps
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        try:
            SamplingSettings.from_dict(self.sampling)
        except (TypeError, ValueError) as err:
            raise ValueError(f"EditMonitor.sampling: {err}") from None
        self.write_videos = write_videos
        self._last_step = -1
        self._logged_identity = False

    def _log_dir(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Edit the subset now; returns the logged means (empty on ranks > 0)."""
        step = trainer.global_step
        if step == self._last_step:
            return {}
        self._last_step = step
        means: dict[str, float] = {}
        if trainer.is_global_zero:
            means = self._evaluate(trainer, pl_module, step)
        trainer.strategy.barrier("sama-benchmark-callback")
        return means

    def _evaluate(self, trainer: pl.Trainer, pl_module: Any, step: int) -> dict[str, float]:
        was_training = pl_module.training
        pipe = EditPipeline.from_module(pl_module, device=pl_module.device)
        settings = SamplingSettings.from_dict({**pipe.settings.to_dict(), **self.sampling})
        metrics, _ = build_metrics(
            has_target=self.benchmark.has_target, has_mask=self.benchmark.has_mask
        )
        metrics = {k: v for k, v in metrics.items() if k not in {"warp_error", "motion_epe"}}
        totals: dict[str, list[float]] = {}
        identity: dict[str, list[float]] = {}
        out_dir = self._log_dir(trainer) / "samples" / f"step_{step:07d}"
        experiment = getattr(trainer.logger, "experiment", None)
        for index in range(self.num_samples):
            item = self.benchmark.item(index)
            result = pipe(
                item.source, item.instruction, fps=item.fps, settings=settings, progress=False
            )
            edit = result.video
            n = edit.shape[0]
            for name, value in score_edit(metrics, item, edit, item.source[:n]).items():
                totals.setdefault(name, []).append(value)
            if not self._logged_identity:
                source = item.source[:n]
                for name, value in score_edit(metrics, item, source, source).items():
                    identity.setdefault(name, []).append(value)
            rows = [item.source[:n], edit] + ([item.target[:n]] if item.target is not None else [])
            if experiment is not None and hasattr(experiment, "add_image"):
                experiment.add_image(f"bench/{item.id}", sample_grid(rows), global_step=step)
            if self.write_videos:
                write_video(out_dir / f"{item.id}.mp4", torch.cat(rows, dim=2), item.fps)
        pl_module.train(was_training)
        means = {f"bench/{k}": _nanmean(v) for k, v in totals.items()}
        if not self._logged_identity:
            means.update({f"bench/identity/{k}": _nanmean(v) for k, v in identity.items()})
            self._logged_identity = True
        if trainer.logger is not None:
            trainer.logger.log_metrics(means, step=step)
        return means


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return sum(kept) / len(kept) if kept else float("nan")
