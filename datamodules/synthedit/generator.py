"""SynthEditGenerator: random access to procedurally generated (source, instruction, target)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.synthedit.scenes import (
    CATEGORIES,
    HELDOUT_COMBOS,
    MAX_OBJECTS,
    ComboRule,
    EditContext,
    caption,
    sample_edit,
    sample_scene,
)
from datamodules.synthedit.world import Rendering, render_scene

SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout")
"""``train`` / ``val`` / ``test`` never show :data:`HELDOUT_COMBOS`; ``heldout`` always does."""

# Categories whose held-out sample needs a held-out object already in the source scene.
_NEEDS_HELDOUT_OBJECT = frozenset({"remove", "background", "style", "hybrid"})
# An object counts as visible when at least this share of its coverage survives occlusion.
_MIN_VISIBLE = 0.5
_MAX_ATTEMPTS = 200


@dataclass(frozen=True)
class SynthEditSample:
    """One generated edit.

    Attributes:
        source: the unedited video, uint8 ``(T, H, W, 3)`` RGB.
        target: the edited video, uint8 ``(T, H, W, 3)`` RGB.
        mask: bool ``(T, H, W)``, True where the edit may change pixels; outside it ``target``
            equals ``source`` exactly. Local edits: the union of the edited objects' visible
            coverage in source and target; background edits: where the background shows in
            either; style edits: all True.
        instruction: the edit instruction, one or two sentences.
        category: one of :data:`~datamodules.synthedit.scenes.CATEGORIES`.
        source_caption, target_caption: one-sentence descriptions of the two videos.
        id: ``f"{split}-{seed}-{index:06d}"``.
        scene: the source scene (see :mod:`datamodules.synthedit.world`), JSON-friendly.
        target_scene: the edited scene.
        edits: one JSON-friendly record per elementary edit (two for ``hybrid``).
    """

    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    instruction: str
    category: str
    source_caption: str
    target_caption: str
    id: str
    scene: dict
    target_scene: dict
    edits: list[dict]


def sample_seed(seed: int, split: str, index: int) -> int:
    """The 64-bit seed of one sample's random stream; a hash of ``(seed, split, index)`` only."""
    key = f"synthedit/{split}/{seed}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _visible(rendering: Rendering) -> bool:
    """Whether every object shows at least half of itself over the clip."""
    for uid, coverage in rendering.coverage.items():
        total = float(coverage.sum())
        if total == 0.0 or float(rendering.visibility[uid].sum()) < _MIN_VISIBLE * total:
            return False
    return True


class SynthEditGenerator:
    """Deterministic random access to SynthEdit samples.

    Sample ``index`` is a pure function of ``(size, frames, seed, split, categories, index)``:
    its random stream is seeded from a hash of ``(seed, split, index)``, so any index is
    generated in O(1) and bit-exactly the same every time, and the splits draw from disjoint
    streams. The category of sample ``index`` is ``categories[index % len(categories)]``
    (balanced); everything else is random. Scene geometry is resolution independent, so the
    same index at another ``size`` shows the same scene.

    Args:
        size: ``(H, W)`` of the rendered frames, each at least 8.
        frames: frames per video, ``T >= 1``.
        seed: dataset seed.
        split: one of :data:`SPLITS`.
        categories: restrict to these categories (default: all of
            :data:`~datamodules.synthedit.scenes.CATEGORIES`, in that order).
    """

    def __init__(
        self,
        size: tuple[int, int] = (32, 32),
        frames: int = 9,
        seed: int = 0,
        split: str = "train",
        categories: Sequence[str] | None = None,
    ) -> None:
        size = tuple(int(side) for side in size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"SynthEdit size must be (H, W) with sides >= 8, got {size}")
        if frames < 1:
            raise ValueError(f"SynthEdit frames must be >= 1, got {frames}")
        if split not in SPLITS:
            raise ValueError(f"unknown SynthEdit split {split!r}; choose from {', '.join(SPLITS)}")
        categories = tuple(CATEGORIES if categories is None else categories)
        unknown = sorted(set(categories) - set(CATEGORIES))
        if unknown or not categories:
            raise ValueError(
                f"unknown SynthEdit categories {unknown or '[] (empty)'}; "
                f"choose from {', '.join(CATEGORIES)}"
            )
        self.size: tuple[int, int] = size
        self.frames = int(frames)
        self.seed = int(seed)
        self.split = split
        self.categories = categories
        self.rule = ComboRule(heldout=split == "heldout")

    def category(self, index: int) -> str:
        """The edit category of sample ``index``."""
        return self.categories[index % len(self.categories)]

    def sample(self, index: int) -> SynthEditSample:
        """Generate sample ``index`` (``>= 0``); a few ms at 9 x 32 x 32."""
        if not isinstance(index, int | np.integer) or index < 0:
            raise IndexError(f"SynthEdit index must be a non-negative integer, got {index!r}")
        index = int(index)
        rng = np.random.default_rng(sample_seed(self.seed, self.split, index))
        category = self.category(index)
        least = 2 if category == "hybrid" else 1
        for _ in range(_MAX_ATTEMPTS):
            scene = sample_scene(
                rng,
                self.rule,
                self.frames,
                count=int(rng.integers(least, MAX_OBJECTS + 1)),
                heldout_object=self.rule.heldout and category in _NEEDS_HELDOUT_OBJECT,
            )
            edit = sample_edit(category, scene, EditContext(rng, self.rule, self.frames))
            if edit is None or (self.rule.heldout and not edit.subjects & HELDOUT_COMBOS):
                continue
            source = render_scene(scene, self.size, self.frames)
            target = render_scene(edit.scene, self.size, self.frames)
            if not (_visible(source) and _visible(target)):
                continue
            if edit.global_change:
                mask = np.ones(source.frames.shape[:-1], dtype=bool)
            else:
                mask = np.zeros(source.frames.shape[:-1], dtype=bool)
                for rendering in (source, target):
                    for layer in edit.layers & rendering.visibility.keys():
                        mask |= rendering.visibility[layer] > 0.0
            # Outside the mask the two renders agree up to float rounding; make it exact.
            edited = np.where(mask[..., None], target.frames, source.frames)
            if not (edited != source.frames).any():
                continue
            return SynthEditSample(
                source=torch.from_numpy(source.frames),
                target=torch.from_numpy(edited),
                mask=torch.from_numpy(mask),
                instruction=edit.instruction,
                category=category,
                source_caption=caption(scene, self.frames),
                target_caption=caption(edit.scene, self.frames),
                id=f"{self.split}-{self.seed}-{index:06d}",
                scene=scene,
                target_scene=edit.scene,
                edits=edit.records,
            )
        raise RuntimeError(
            f"SynthEdit found no valid {category!r} sample for index {index} in "
            f"{_MAX_ATTEMPTS} attempts at size {self.size}; use a larger size"
        )
