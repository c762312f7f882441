"""Speed perturbation: restore normal playback speed (Motion Alignment pretext)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tasks._video import as_batch
from tasks.base import ClipCorruptionTask, register_task

__all__ = ["SpeedPerturbation", "speed_perturb"]


def speed_perturb(video: Tensor, factor: float = 2.0, num_frames: int | None = None) -> Tensor:
    """Play ``video`` at ``factor`` times its speed (2.0 = twice as fast).

    Output frame ``i`` shows the input at time ``i * factor`` (in input frames). Integer times
    select that frame exactly; fractional times blend the two neighbouring frames linearly
    (so ``factor < 1`` gives a slow motion). Times past the last frame hold the last frame.

    Args:
        video: ``(B, C, T, H, W)`` or ``(C, T, H, W)``.
        factor: playback speed, > 0.
        num_frames: output length, ``4k + 1``. ``None``: the longest ``4k + 1`` that stays
            inside the clip, ``1 + 4 * floor(floor((T - 1) / factor) / 4)`` (9 frames at 2x -> 5).

    Returns:
        the perturbed video, ``num_frames`` frames, same layout and dtype as ``video``.
    """
    x, unbatched = as_batch(video, "speed_perturb")
    if not factor > 0:
        raise ValueError(f"speed_perturb: factor must be > 0, got {factor}")
    frames = x.shape[2]
    if num_frames is None:
        covered = math.floor((frames - 1) / factor + 1e-9)  # 8 / 0.1 is 79.999...
        num_frames = 1 + 4 * (covered // 4)
    elif num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"speed_perturb: num_frames must be 4k + 1, got {num_frames}")
    times = (torch.arange(num_frames, dtype=torch.float64) * factor).clamp(max=frames - 1)
    low = times.floor().long()
    high = (low + 1).clamp(max=frames - 1)
    blend = (times - low).to(x.dtype).to(x.device).view(1, 1, -1, 1, 1)
    out = x[:, :, low.to(x.device)] * (1 - blend) + x[:, :, high.to(x.device)] * blend
    return out[0] if unbatched else out


@register_task
class SpeedPerturbation(ClipCorruptionTask):
    """Source = the clip played faster (:func:`speed_perturb`); target = the clip.

    The source is shorter than the target (5 frames for a 9-frame clip at 2x); the model gives
    source and target the same RoPE positions from frame 0, so the source covers the target's
    time span compressed.

    Args:
        weight: sampling weight (default 3, the paper's 1:2:3:4 mix).
        factor: playback speed of the source (the paper: 2).
        num_frames: source length (``4k + 1``); ``None`` keeps what the clip covers.
    """

    name = "speed_perturbation"
    default_weight = 3.0
    instruction_token = "[Restore the video to normal playback speed.]"
    description = "restore normal speed from a 2x-speed source (4k+1 frames)"
    deterministic = True  # the speed-up draws nothing: the same clip gives the same source

    def __init__(
        self,
        weight: float | None = None,
        factor: float = 2.0,
        num_frames: int | None = None,
    ) -> None:
        super().__init__(weight)
        if not factor > 0 or factor == 1.0:
            raise ValueError(f"task {self.name!r}: factor must be > 0 and != 1, got {factor}")
        if num_frames is not None and (num_frames < 1 or (num_frames - 1) % 4):
            raise ValueError(f"task {self.name!r}: num_frames must be 4k + 1, got {num_frames}")
        self.factor = factor
        self.num_frames = num_frames

    def corrupt(self, video: Tensor, generator: torch.Generator) -> tuple[Tensor, None]:
        """``(B, 3, T, H, W)`` -> the clip at ``factor`` times its speed ``(B, 3, Ts, H, W)``."""
        return speed_perturb(video, self.factor, self.num_frames), None
