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
from sama.io import to_model_video, write_video

__all__ = ["EditMonitor", "sample_grid"]


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
        steps / guidance / seed: sampler settings for these edits (kept small for speed).
        write_videos: also write mp4s to the log directory.
    """

    def __init__(
        self,
        benchmark: EvalSet | None = None,
        num_samples: int = 4,
        every_n_steps: int = 500,
        steps: int = 20,
        guidance: float = 1.0,
        seed: int = 0,
        write_videos: bool = True,
    ) -> None:
        super().__init__()
        self.benchmark = benchmark or SynthEditEvalSet(num=num_samples)
        self.num_samples = min(num_samples, len(self.benchmark))
        self.every_n_steps = every_n_steps
        self.steps = steps
        self.guidance = guidance
        self.seed = seed
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
        from sama.pipeline import EditPipeline

        was_training = pl_module.training
        pipe = EditPipeline.from_module(pl_module, device=pl_module.device)
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
                item.source,
                item.instruction,
                fps=item.fps,
                steps=self.steps,
                guidance=self.guidance,
                seed=self.seed,
                progress=False,
            )
            edit = result.video
            n = edit.shape[0]
            kwargs = {
                "source": to_model_video(item.source[:n]).unsqueeze(0),
                "target": to_model_video(item.target[:n]).unsqueeze(0)
                if item.target is not None
                else None,
                "mask": item.mask[:n][None, None].float() if item.mask is not None else None,
                "texts": [item.instruction],
            }
            edit_model = to_model_video(edit).unsqueeze(0)
            for name, metric in metrics.items():
                value = float(metric.score(edit_model, **kwargs)[0])
                totals.setdefault(name, []).append(value)
                if not self._logged_identity:
                    base = float(metric.score(kwargs["source"], **kwargs)[0])
                    identity.setdefault(name, []).append(base)
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
