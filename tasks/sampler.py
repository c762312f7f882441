"""Multi-task sampler: which task a micro-batch belongs to.

The choice for micro-batch ``index`` is a pure function of ``(seed, index)``: every DDP rank
and every dataloader worker computes the same answer without communicating, and a run resumed
at micro-batch ``index`` continues the exact sequence it would have produced uninterrupted.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

__all__ = ["TaskSampler", "PRETRAIN_MIX"]

#: The paper's stage-0 ratio, no-pretext : cube : speed : tube = 1 : 2 : 3 : 4.
PRETRAIN_MIX: dict[str, float] = {
    "reconstruction": 1.0,
    "cube_inpainting": 2.0,
    "speed_perturbation": 3.0,
    "tube_shuffle": 4.0,
}


def _uniform(seed: int, index: int) -> float:
    """A uniform number in [0, 1) derived from ``(seed, index)`` alone (platform independent)."""
    digest = hashlib.blake2b(struct.pack("<qq", seed, index), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class TaskSampler:
    """Weighted, stateless choice of a task per micro-batch.

    Args:
        weights: task name -> non-negative sampling weight (need not sum to 1).
        streams: task name -> the data stream the task reads (``clips``, ``video_pairs``,
            ``image_pairs``).
        seed: the run's seed; the sequence depends on nothing else.
    """

    def __init__(self, weights: Mapping[str, float], streams: Mapping[str, str], seed: int = 0):
        if not weights:
            raise ValueError("TaskSampler needs at least one task")
        missing = sorted(set(weights) - set(streams))
        if missing:
            raise ValueError(f"TaskSampler: no stream given for task(s) {missing}")
        for name, w in weights.items():
            if not (w >= 0.0):
                raise ValueError(f"TaskSampler: weight of task {name!r} must be >= 0, got {w}")
        total = float(sum(weights.values()))
        if total <= 0.0:
            raise ValueError("TaskSampler: all task weights are zero; give one task a weight > 0")
        self.names: list[str] = list(weights)
        self.weights: dict[str, float] = {n: float(weights[n]) for n in self.names}
        self.streams: dict[str, str] = {n: streams[n] for n in self.names}
        self.seed = int(seed)
        cumulative, acc = [], 0.0
        for n in self.names:
            acc += self.weights[n] / total
            cumulative.append(acc)
        cumulative[-1] = 1.0
        self._cumulative = cumulative

    def probabilities(self) -> dict[str, float]:
        """Each task's share of micro-batches."""
        total = sum(self.weights.values())
        return {n: w / total for n, w in self.weights.items()}

    def task_at(self, index: int) -> str:
        """Name of the task that owns micro-batch ``index`` (0-based, counted over the run)."""
        u = _uniform(self.seed, int(index))
        for name, edge in zip(self.names, self._cumulative, strict=True):
            if u < edge and self.weights[name] > 0:
                return name
        return next(n for n in reversed(self.names) if self.weights[n] > 0)

    def stream_at(self, index: int) -> str:
        """Name of the stream micro-batch ``index`` reads."""
        return self.streams[self.task_at(index)]

    def stream_of(self, task: str) -> str:
        return self.streams[task]

    def sequence(self, start: int, count: int) -> list[str]:
        """Tasks of micro-batches ``start .. start + count - 1``."""
        return [self.task_at(i) for i in range(start, start + count)]

    def active_streams(self) -> set[str]:
        """Streams that some task with a positive weight reads."""
        return {self.streams[n] for n in self.names if self.weights[n] > 0}

    def __repr__(self) -> str:
        mix = ", ".join(f"{n}={w:g}" for n, w in self.weights.items())
        return f"TaskSampler({mix}; seed={self.seed})"
