"""Semantic anchoring on image-edit pairs (stage 0): images as 1-frame videos."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sama.export import EDIT_PREFIX
from tasks.base import EditSample, Task, register_task
from tasks.instruction_editing import edit_sample

__all__ = ["SemanticAnchoring"]


@register_task
class SemanticAnchoring(Task):
    """Instruction image-edit pairs; the edited image is the semantic anchor.

    Each pair is a 1-frame source and target ``(B, 3, 1, H, W)``; the instruction gets the
    ``"[Video edit] "`` prefix. The semantic loss (on every task) makes the model predict the
    anchor's semantic tokens; here the anchor is the whole target, which is what teaches the
    model edit semantics before it ever sees a paired video.

    Args:
        weight: sampling weight (the image-pair share of the pre-training mix).
    """

    name = "semantic_anchoring"
    stream = "image_pairs"
    default_weight = 1.0
    instruction_token = EDIT_PREFIX.strip()
    description = "instruction image-edit pairs as 1-frame videos, prefix '[Video edit] '"
    corrupts_source = False
    deterministic = True

    def prepare(self, batch: Mapping[str, Any], generator: torch.Generator) -> EditSample:
        sample = edit_sample(self, batch)
        if not sample.is_image:
            raise ValueError(
                f"task {self.name!r}: expects 1-frame image pairs, got {sample.target.shape[2]} "
                "frames; use InstructionEditing for video pairs"
            )
        return sample
