"""Instruction editing: supervised (source, instruction, target) edit pairs (stage 1, SFT)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from tasks.base import EditSample, Task, register_task, require

__all__ = ["InstructionEditing", "EDIT_PREFIX"]

#: Prompt prefix of the released inference code (its negative prompt is the bare "[Video edit]").
EDIT_PREFIX = "[Video edit] "


def edit_sample(task: Task, batch: Mapping[str, Any]) -> EditSample:
    """The SFT sample of an edit-pair batch: source -> target under the prefixed instruction.

    The pair's optional ``mask`` (the edited region) is not a loss mask: the loss covers the
    whole target, so the unedited regions are learned as a copy of the source.
    """
    require(batch, ("source", "target", "instruction"), task.name)
    target = batch["target"]
    return EditSample(
        source=batch["source"],
        target=target,
        instructions=[EDIT_PREFIX + text.strip() for text in batch["instruction"]],
        anchors=task.anchors(target),
        is_image=target.shape[2] == 1,
    )


@register_task
class InstructionEditing(Task):
    """Edit pairs with the flow-matching (+ semantic anchoring) loss.

    Args:
        weight: sampling weight.
        stream: ``"video_pairs"`` (default) or ``"image_pairs"`` (1-frame videos).
    """

    name = "instruction_editing"
    stream = "video_pairs"
    default_weight = 1.0
    instruction_token = EDIT_PREFIX.strip()
    description = "supervised edit pairs, instruction prefixed with '[Video edit] ' (SFT)"
    corrupts_source = False

    def __init__(
        self,
        weight: float | None = None,
        stream: Literal["video_pairs", "image_pairs"] = "video_pairs",
    ) -> None:
        if stream not in ("video_pairs", "image_pairs"):
            raise ValueError(
                f"task {self.name!r}: stream must be 'video_pairs' or 'image_pairs', got {stream!r}"
            )
        self.stream = stream
        super().__init__(weight)

    def prepare(self, batch: Mapping[str, Any], generator: torch.Generator) -> EditSample:
        return edit_sample(self, batch)
