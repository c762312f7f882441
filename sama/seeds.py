"""Seeds derived from integers alone: the same on every platform, process and rank.

Every seeded draw of the project (a training step's generator, the task sampler's choice, a
SynthEdit scene) takes its seed from :func:`stable_seed` of the integers that identify it, so a
resumed or distributed run repeats the same draws.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["stable_seed", "stable_uniform"]


def _digest(parts: tuple[int, ...]) -> int:
    data = struct.pack(f"<{len(parts)}q", *parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def stable_seed(*parts: int) -> int:
    """A 63-bit seed (valid for ``torch.Generator.manual_seed``) from signed 64-bit integers."""
    return _digest(parts) >> 1


def stable_uniform(*parts: int) -> float:
    """A uniform number in ``[0, 1)`` from signed 64-bit integers."""
    return _digest(parts) / 2.0**64
