"""Small helpers shared by the corruption functions (layouts and random draws)."""

from __future__ import annotations

import torch
from torch import Tensor


def as_batch(video: Tensor, what: str) -> tuple[Tensor, bool]:
    """``(B, C, T, H, W)`` or ``(C, T, H, W)`` -> ``(B, C, T, H, W)`` and whether it was unbatched."""
    if video.ndim == 4:
        return video.unsqueeze(0), True
    if video.ndim == 5:
        return video, False
    raise ValueError(
        f"{what}: video must be (B, C, T, H, W) or (C, T, H, W), got {tuple(video.shape)}"
    )


def randint(low: int, high: int, count: int, generator: torch.Generator | None) -> list[int]:
    """``count`` integers in ``[low, high)`` drawn from ``generator`` (on its own device)."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(low, high, (count,), generator=generator, device=device).tolist()
