"""A third-party sama task, kept outside the project's packages: reverse playback.

The source is the clip played backwards; the model learns to restore the forward order. The
code below the docstring is the example of docs/tasks.md ("Adding a task") verbatim
(tests/test_plugin_task.py checks it). The package is published to sama through the
``sama.tasks`` entry point declared in ``sama_reverse_playback-0.1.0.dist-info/entry_points.txt``
(what ``pip install`` of a distribution with ``[project.entry-points."sama.tasks"]`` writes).
"""

from tasks import ClipCorruptionTask


class ReversePlayback(ClipCorruptionTask):
    name = "reverse_playback"
    default_weight = 1.0
    instruction_token = "[Play the video forwards.]"
    description = "restore forward playback from a time-reversed source"
    deterministic = True  # the same clip always gives the same source

    def corrupt(self, video, generator):
        # video: (B, 3, T, H, W) in [-1, 1], the target; returns (source, loss mask or None)
        return video.flip(2), None
