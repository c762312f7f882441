"""Cube inpainting: complete a masked space-time block of the clip (Motion Alignment pretext)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tasks._video import as_batch, randint
from tasks.base import ClipCorruptionTask, register_task

__all__ = ["CubeInpainting", "cube_inpaint"]


def cube_inpaint(
    video: Tensor,
    ratio: float = 0.3,
    mode: Literal["frames", "cube"] = "frames",
    generator: torch.Generator | None = None,
    fill: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Mask one contiguous block covering ``ratio`` of each clip.

    Args:
        video: ``(B, C, T, H, W)`` or ``(C, T, H, W)``.
        ratio: share of the clip to mask, in (0, 1).
        mode: ``"frames"`` masks ``round(ratio * T)`` whole contiguous frames (at least 1, at
            most ``T - 1``), never frame 0, as the released code does; ``"cube"`` masks one
            contiguous space-time cube whose side along every axis longer than 1 is
            ``round(size * ratio ** (1 / axes))``, i.e. about ``ratio`` of the volume, at a
            random position.
        generator: source of the random block positions (one block per sample).
        fill: value written into the masked block (0 = mid grey for videos in [-1, 1]).

    Returns:
        ``(corrupted, mask)``: ``corrupted`` like ``video``; ``mask`` with one channel
        (``(B, 1, T, H, W)`` or ``(1, T, H, W)``), 1 where masked, in ``video``'s dtype.
    """
    x, unbatched = as_batch(video, "cube_inpaint")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"cube_inpaint: ratio must be in (0, 1), got {ratio}")
    b, _, t, h, w = x.shape
    mask = torch.zeros(b, 1, t, h, w, dtype=x.dtype, device=x.device)
    if mode == "frames":
        if t < 2:
            raise ValueError(
                f"cube_inpaint: mode 'frames' needs >= 2 frames (frame 0 is kept), got {t}"
            )
        length = min(max(round(ratio * t), 1), t - 1)
        for i, start in enumerate(randint(1, t - length + 1, b, generator)):
            mask[i, :, start : start + length] = 1
    elif mode == "cube":
        sizes = (t, h, w)
        axes = sum(size > 1 for size in sizes)
        side = ratio ** (1.0 / max(axes, 1))
        lengths = [min(max(round(size * side), 1), size) for size in sizes]
        starts = [
            randint(0, size - n + 1, b, generator) for size, n in zip(sizes, lengths, strict=True)
        ]
        for i in range(b):
            (t0, h0, w0), (lt, lh, lw) = (s[i] for s in starts), lengths
            mask[i, :, t0 : t0 + lt, h0 : h0 + lh, w0 : w0 + lw] = 1
    else:
        raise ValueError(f"cube_inpaint: mode must be 'frames' or 'cube', got {mode!r}")
    corrupted = x * (1 - mask) + fill * mask
    if unbatched:
        return corrupted[0], mask[0]
    return corrupted, mask


@register_task
class CubeInpainting(ClipCorruptionTask):
    """Source = the clip with a masked block (:func:`cube_inpaint`); target = the clip.

    Args:
        weight: sampling weight (default 2, the paper's 1:2:3:4 mix).
        ratio: share of the clip to mask (the paper: 30%).
        mode: ``"frames"`` (the released code) or ``"cube"`` (a space-time cube).
        loss_region: ``"all"`` (the paper: the same loss everywhere) or ``"masked"`` (loss only
            on the masked block, an ablation).
    """

    name = "cube_inpainting"
    default_weight = 2.0
    instruction_token = "[Complete the missing regions in the video.]"
    description = "complete a masked contiguous space-time block (30% of the clip)"
    deterministic = False

    def __init__(
        self,
        weight: float | None = None,
        ratio: float = 0.3,
        mode: Literal["frames", "cube"] = "frames",
        loss_region: Literal["all", "masked"] = "all",
    ) -> None:
        super().__init__(weight)
        if mode not in ("frames", "cube"):
            raise ValueError(f"task {self.name!r}: mode must be 'frames' or 'cube', got {mode!r}")
        if loss_region not in ("all", "masked"):
            raise ValueError(
                f"task {self.name!r}: loss_region must be 'all' or 'masked', got {loss_region!r}"
            )
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"task {self.name!r}: ratio must be in (0, 1), got {ratio}")
        self.ratio = ratio
        self.mode = mode
        self.loss_region = loss_region

    def corrupt(self, video: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """``(B, 3, T, H, W)`` -> the clip with one block set to 0, and the block ``(B, 1, T, H,
        W)`` as the loss mask when ``loss_region="masked"`` (else ``None``)."""
        source, mask = cube_inpaint(video, self.ratio, self.mode, generator)
        return source, mask if self.loss_region == "masked" else None
