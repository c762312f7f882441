"""Instruction editing: supervised (source, instruction, target) edit pairs (stage 1, SFT)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from sama.export import EDIT_PREFIX
from tasks.base import EditSample, Task, register_task, require

__all__ = ["InstructionEditing", "EDIT_PREFIX"]


def edit_sample(
    task: Task, batch: Mapping[str, Any], edit_region_weight: float = 1.0
) -> EditSample:
    """The SFT sample of an edit-pair batch: source -> target under the prefixed instruction.

    The loss covers the whole target, so the unedited regions are learned as a copy of the
    source. With ``edit_region_weight`` ``w != 1`` and a pair ``mask`` ``(B, 1, T, H, W)``
    (1 = edited), pixels inside the edited region weigh ``w`` and the rest 1 (the loss stays a
    weighted mean); batches without a mask are unweighted. The pair's source is reusable
    (cached with the target when the module has a latent cache).
    """
    require(batch, ("source", "target", "instruction"), task.name)
    target = batch["target"]
    loss_mask = None
    mask = batch.get("mask")
    if edit_region_weight != 1.0 and isinstance(mask, torch.Tensor):
        loss_mask = 1.0 + (edit_region_weight - 1.0) * mask.to(torch.float32).clamp(0, 1)
    return task.make_sample(
        batch["source"],
        target,
        [EDIT_PREFIX + text.strip() for text in batch["instruction"]],
        loss_mask,
        source_reusable=True,
    )


@register_task
class InstructionEditing(Task):
    """Edit pairs with the flow-matching (+ semantic anchoring) loss.

    Args:
        weight: sampling weight.
        stream: ``"video_pairs"`` (default) or ``"image_pairs"`` (1-frame videos).
        edit_region_weight: loss weight of the pixels inside the pair's edit ``mask`` (the
            rest weigh 1). The default 1 is the paper's plain loss; small models whose edits
            cover a few percent of the frame learn the edit itself sooner with a larger value.
    """

    name = "instruction_editing"
    stream = "video_pairs"
    default_weight = 1.0
    instruction_token = EDIT_PREFIX.strip()
    description = "supervised edit pairs, instruction prefixed with '[Video edit] ' (SFT)"
    corrupts_source = False
    deterministic = True

    def __init__(
        self,
        weight: float | None = None,
        stream: Literal["video_pairs", "image_pairs"] = "video_pairs",
        edit_region_weight: float = 1.0,
    ) -> None:
        if edit_region_weight <= 0:
            raise ValueError(
                f"task {self.name!r}: edit_region_weight must be > 0, got {edit_region_weight}"
            )
        self.edit_region_weight = float(edit_region_weight)
        if stream not in ("video_pairs", "image_pairs"):
            raise ValueError(
                f"task {self.name!r}: stream must be 'video_pairs' or 'image_pairs', got {stream!r}"
            )
        self.stream = stream
        super().__init__(weight)

    def prepare(self, batch: Mapping[str, Any], generator: torch.Generator) -> EditSample:
        return edit_sample(self, batch, self.edit_region_weight)
