"""Tube shuffle: restore the order of permuted space-time tubes (Motion Alignment pretext)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tasks._video import as_batch
from tasks.base import ClipCorruptionTask, register_task

__all__ = ["TubeShuffle", "tube_shuffle", "tube_unshuffle"]


def _region(shape: Sequence[int], grid: Sequence[int], what: str) -> tuple[int, ...]:
    """Tube sizes ``(st, sh, sw)``: the largest whole tubes the ``(T, H, W)`` shape holds."""
    if len(grid) != 3 or any(g < 1 for g in grid):
        raise ValueError(f"{what}: grid must be 3 positive ints (t, h, w), got {tuple(grid)}")
    if all(g == 1 for g in grid):
        raise ValueError(f"{what}: grid {tuple(grid)} has one tube; nothing to shuffle")
    sizes = tuple(size // g for size, g in zip(shape, grid, strict=True))
    if min(sizes) < 1:
        raise ValueError(f"{what}: (T, H, W)={tuple(shape)} is smaller than the grid {tuple(grid)}")
    return sizes


def _bounds(shape: Sequence[int], grid: Sequence[int], sizes: Sequence[int]) -> tuple[slice, ...]:
    """The tiled region: the last ``gt * st`` frames (the leading remainder, frame 0 of a
    ``4k + 1`` clip, stays in place) and the first ``gh * sh`` rows / ``gw * sw`` columns."""
    (frames, _, _), (gt, gh, gw), (st, sh, sw) = shape, grid, sizes
    return slice(frames - gt * st, frames), slice(0, gh * sh), slice(0, gw * sw)


def _to_tubes(x: Tensor, grid: Sequence[int], sizes: Sequence[int]) -> Tensor:
    """``(B, C, T, H, W)`` -> ``(B, G, C, st, sh, sw)``: the tubes of the tiled region."""
    (gt, gh, gw), (st, sh, sw) = grid, sizes
    b, c = x.shape[:2]
    region = x[(slice(None), slice(None), *_bounds(x.shape[2:], grid, sizes))]
    tubes = region.reshape(b, c, gt, st, gh, sh, gw, sw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return tubes.reshape(b, gt * gh * gw, c, st, sh, sw)


def _from_tubes(tubes: Tensor, into: Tensor, grid: Sequence[int], sizes: Sequence[int]) -> Tensor:
    """Inverse of :func:`_to_tubes`: a copy of ``into`` with its tiled region from ``tubes``."""
    (gt, gh, gw), (st, sh, sw) = grid, sizes
    b, _, c = tubes.shape[:3]
    region = tubes.reshape(b, gt, gh, gw, c, st, sh, sw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    out = into.clone()
    out[(slice(None), slice(None), *_bounds(into.shape[2:], grid, sizes))] = region.reshape(
        b, c, gt * st, gh * sh, gw * sw
    )
    return out


def tube_shuffle(
    video: Tensor,
    grid: Sequence[int] = (2, 2, 2),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Split each clip into a ``(gt, gh, gw)`` grid of space-time tubes and permute them.

    Tube slot ``j`` of the output holds input tube ``permutation[j]`` (tubes numbered in
    ``(t, h, w)`` row-major order). Each sample gets its own permutation, never the identity
    (redrawn until it differs). When ``T``, ``H`` or ``W`` is not divisible by the grid, the
    tubes have size ``floor(size / g)``; in time they tile the *last* frames, so the leading
    remainder stays in place (frame 0 of a ``4k + 1`` clip: tubes of ``2k`` frames, aligned with
    the causal VAE's frame groups), in space the first rows and columns, the trailing rows and
    columns staying in place. Untouched pixels make the result exactly invertible with
    :func:`tube_unshuffle`.

    Args:
        video: ``(B, C, T, H, W)`` or ``(C, T, H, W)``.
        grid: tubes along (T, H, W); the paper uses 2x2x2.
        generator: source of the permutations.

    Returns:
        ``(shuffled, permutation)``: ``shuffled`` like ``video``; ``permutation`` long,
        ``(B, G)`` (or ``(G,)`` for an unbatched video), ``G = gt * gh * gw``.
    """
    x, unbatched = as_batch(video, "tube_shuffle")
    sizes = _region(x.shape[2:], grid, "tube_shuffle")
    count = grid[0] * grid[1] * grid[2]
    device = generator.device if generator is not None else "cpu"
    identity = torch.arange(count, device=device)
    rows = []
    for _ in range(x.shape[0]):
        perm = identity
        while torch.equal(perm, identity):
            perm = torch.randperm(count, generator=generator, device=device)
        rows.append(perm)
    permutation = torch.stack(rows).to(x.device)
    tubes = _to_tubes(x, grid, sizes)
    shuffled = tubes.gather(1, _expand_index(permutation, tubes))
    out = _from_tubes(shuffled, x, grid, sizes)
    if unbatched:
        return out[0], permutation[0]
    return out, permutation


def tube_unshuffle(
    shuffled: Tensor, permutation: Tensor, grid: Sequence[int] = (2, 2, 2)
) -> Tensor:
    """Exact inverse of :func:`tube_shuffle` given its ``permutation`` and ``grid``."""
    x, unbatched = as_batch(shuffled, "tube_unshuffle")
    perm = permutation.unsqueeze(0) if permutation.ndim == 1 else permutation
    count = grid[0] * grid[1] * grid[2]
    if perm.shape != (x.shape[0], count):
        raise ValueError(
            f"tube_unshuffle: permutation must be (B, G)=({x.shape[0]}, {count}), got "
            f"{tuple(permutation.shape)}"
        )
    sizes = _region(x.shape[2:], grid, "tube_unshuffle")
    tubes = _to_tubes(x, grid, sizes)
    inverse = perm.to(x.device).argsort(dim=1)
    restored = _from_tubes(tubes.gather(1, _expand_index(inverse, tubes)), x, grid, sizes)
    return restored[0] if unbatched else restored


def _expand_index(index: Tensor, tubes: Tensor) -> Tensor:
    """``(B, G)`` -> index broadcast to ``tubes`` ``(B, G, C, st, sh, sw)`` for ``gather``."""
    return index.view(*index.shape, 1, 1, 1, 1).expand_as(tubes)


@register_task
class TubeShuffle(ClipCorruptionTask):
    """Source = the clip with permuted space-time tubes (:func:`tube_shuffle`); target = the clip.

    Args:
        weight: sampling weight (default 4, the paper's 1:2:3:4 mix).
        grid: tubes along (T, H, W) (the paper: 2x2x2).
    """

    name = "tube_shuffle"
    default_weight = 4.0
    instruction_token = "[Restore the correct spatio-temporal order of the video segments.]"
    description = "restore the order of a 2x2x2 grid of permuted space-time tubes"
    deterministic = False

    def __init__(
        self,
        weight: float | None = None,
        grid: tuple[int, int, int] = (2, 2, 2),
    ) -> None:
        super().__init__(weight)
        self.grid = tuple(int(g) for g in grid)
        _region(self.grid, self.grid, f"task {self.name!r}")

    def corrupt(self, video: Tensor, generator: torch.Generator) -> tuple[Tensor, None]:
        """``(B, 3, T, H, W)`` -> the clip with its tubes permuted (one permutation a sample)."""
        return tube_shuffle(video, self.grid, generator)[0], None
