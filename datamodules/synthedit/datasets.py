"""Map-style torch Datasets over SynthEdit for the training streams (see docs/architecture.md).

Items have no batch dimension; videos are float32 ``(3, T, H, W)`` in [-1, 1]
(:func:`sama.io.to_model_video`), masks float32 ``(1, T, H, W)`` with 1 inside the edit.
Constructor arguments are plain types, so the classes are configurable from YAML.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.synthedit.generator import SynthEditGenerator, SynthEditSample, sample_seed
from sama.io import to_model_video


class _SynthEditDataset(Dataset):
    """``num`` samples of a :class:`SynthEditGenerator`; indices ``0 .. num - 1``."""

    def __init__(
        self,
        num: int = 1000,
        size: tuple[int, int] = (32, 32),
        frames: int = 9,
        seed: int = 0,
        split: str = "train",
        categories: list[str] | None = None,
    ) -> None:
        if num < 1:
            raise ValueError(f"{type(self).__name__}: num must be >= 1, got {num}")
        self.num = int(num)
        self.generator = SynthEditGenerator(
            size=tuple(size), frames=frames, seed=seed, split=split, categories=categories
        )

    def __len__(self) -> int:
        return self.num

    def sample_raw(self, index: int) -> SynthEditSample:
        """The generator's sample for item ``index`` (uint8 videos, bool mask, scene dicts)."""
        if not 0 <= index < self.num:
            raise IndexError(f"{type(self).__name__} index {index} out of range [0, {self.num})")
        return self.generator.sample(index)


def _pair_item(sample: SynthEditSample) -> dict[str, Any]:
    return {
        "source": to_model_video(sample.source),
        "target": to_model_video(sample.target),
        "mask": sample.mask.to(torch.float32).unsqueeze(0),
        "instruction": sample.instruction,
        "id": sample.id,
        "category": sample.category,
    }


def image_pair_item(sample: SynthEditSample, draw: int) -> dict[str, Any]:
    """One frame of a video pair as a 1-frame pair item: the ``draw``-th (mod count) of the
    frames where the edit changes pixels. Layouts as :func:`_pair_item` with ``T = 1``."""
    changed = (sample.target != sample.source).flatten(1).any(dim=1).nonzero().flatten()
    frame = int(changed[draw % len(changed)])
    item = _pair_item(sample)
    for key in ("source", "target", "mask"):
        item[key] = item[key][:, frame : frame + 1]
    return item


class SynthEditPairs(_SynthEditDataset):
    """Video edit pairs: ``{"source", "target": (3, T, H, W), "mask": (1, T, H, W),
    "instruction", "id", "category"}``.

    Args:
        num: number of items. size: ``(H, W)``. frames: ``T``. seed / split / categories: see
            :class:`~datamodules.synthedit.generator.SynthEditGenerator`.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _pair_item(self.sample_raw(index))


class SynthEditImagePairs(_SynthEditDataset):
    """Image edit pairs: one frame of each generated video pair, as 1-frame videos.

    Items are as :class:`SynthEditPairs` with ``T = 1``. The frame is drawn deterministically
    (from the sample's seed) among the frames where the edit changes pixels. ``frames`` is the
    length of the clip the frame is taken from, so images show mid-motion poses.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = self.generator
        draw = sample_seed(generator.seed, generator.split, index) >> 8
        return image_pair_item(self.sample_raw(index), draw)


class SynthEditClips(_SynthEditDataset):
    """Raw clips for the ``clips`` stream: ``{"video": (3, T, H, W), "caption": str}``, the
    source video of each sample and its caption."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.sample_raw(index)
        return {"video": to_model_video(sample.source), "caption": sample.source_caption}
