"""Reconstruction: the paper's "no-pretext" share of the clip stream."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tasks.base import ClipCorruptionTask, register_task

__all__ = ["Reconstruction"]


@register_task
class Reconstruction(ClipCorruptionTask):
    """Clips without a pretext corruption; the instruction is the caption alone.

    Args:
        weight: sampling weight (default 1, the paper's 1:2:3:4 mix).
        mode: ``"generation"`` (default): no source tokens, text-to-video on the caption. This
            keeps the backbone's text-to-video prior, which is what the paper's clip stream
            trains when no pretext applies. ``"identity"``: the source is the clip itself, a
            copy task that teaches the model to preserve an unchanged source.
    """

    name = "reconstruction"
    default_weight = 1.0
    instruction_token = ""
    description = "no pretext: text-to-video on the caption (or copy the source, mode=identity)"
    corrupts_source = False
    deterministic = True

    def __init__(
        self,
        weight: float | None = None,
        mode: Literal["generation", "identity"] = "generation",
    ) -> None:
        super().__init__(weight)
        if mode not in ("generation", "identity"):
            raise ValueError(
                f"task {self.name!r}: mode must be 'generation' or 'identity', got {mode!r}"
            )
        self.mode = mode

    def corrupt(self, video: Tensor, generator: torch.Generator) -> tuple[Tensor | None, None]:
        """No corruption: no source (``generation``) or the clip itself (``identity``)."""
        return (video if self.mode == "identity" else None), None
