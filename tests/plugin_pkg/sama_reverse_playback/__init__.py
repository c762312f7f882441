"""A third-party sama task, kept outside the project's packages: reverse playback.

The source is the clip played backwards; the model learns to restore the forward order. The
package is published to sama through the ``sama.tasks`` entry point declared in
``sama_reverse_playback-0.1.0.dist-info/entry_points.txt`` (what ``pip install`` of a
distribution with ``[project.entry-points."sama.tasks"]`` writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tasks import EditSample, Task


class ReversePlayback(Task):
    """Source = the clip reversed in time; target = the clip."""

    name = "reverse_playback"
    stream = "clips"
    default_weight = 1.0
    instruction_token = "[Play the video forwards.]"
    description = "restore forward playback from a time-reversed source"
    corrupts_source = True

    def prepare(self, batch: Mapping[str, Any], generator: torch.Generator) -> EditSample:
        video = batch["video"]
        captions = [caption.strip() for caption in batch["caption"]]
        return EditSample(
            source=video.flip(2),
            target=video,
            instructions=[
                f"{self.instruction_token} {text}" if text else self.instruction_token
                for text in captions
            ],
            anchors=self.anchors(video),
        )
