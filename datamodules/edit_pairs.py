"""Paired edits (the ``video_pairs`` and ``image_pairs`` streams) from JSONL or CSV manifests.

One item per manifest line::

    {"source": "src/0001.mp4", "target": "tgt/0001.mp4", "instruction": "make it snow",
     "id": "0001", "category": "weather", "mask": "masks/0001.npz"}

``source``, ``target`` and ``instruction`` are required (``target`` only when
``require_target=True``); ``id`` defaults to ``<manifest stem>:<line>``, ``category`` to ``""``.
Paths are relative to the manifest's folder. Images (PNG, JPEG, WebP, BMP) are 1-frame videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.clips import crop_box, resize_cover, split_check
from datamodules.manifests import (
    ManifestError,
    read_manifest,
    required_field,
    resolve_file,
    seeded_rng,
)
from sama.io import (
    VideoReadError,
    is_valid_frame_count,
    probe_video,
    read_video,
    snap_frames,
    to_model_video,
)

__all__ = ["IMAGE_SUFFIXES", "EditPair", "EditPairs", "ManifestError"]

#: Suffixes read as 1-frame videos.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# Mask pixels at or above this level (any channel, 0..255) count as edited; lower values are
# black or compression noise around black. A mask whose values are all 0 or 1 uses 1 instead.
_MASK_LEVEL = 128


@dataclass(frozen=True)
class EditPair:
    """One manifest item, with paths resolved."""

    source: Path
    target: Path | None
    instruction: str
    id: str
    category: str
    mask: Path | None

    @property
    def is_image(self) -> bool:
        return self.source.suffix.lower() in IMAGE_SUFFIXES


class EditPairs(Dataset):
    """Source / target / instruction triples, optionally with an edit mask.

    Args:
        manifests: ``.jsonl`` or ``.csv`` manifests (a single path is accepted too).
        frames: frames per video pair, ``1 + 4k``; ``None`` keeps all frames the shorter of
            source and target has, snapped down to ``1 + 4k``. Image pairs always have 1.
        stride: keep every ``stride``-th frame (lowered when a pair is too short for it).
        size: output ``(H, W)``. Source, target and mask are scaled alike (aspect of the
            source kept, covering ``size``) and cut with the same crop: centred for ``val``,
            seeded random for ``train``. A target of another resolution is scaled to the
            source's scaled size.
        require_target: ``False`` for benchmarks without ground truth (no ``target`` then).
        split: ``"train"`` (seeded random window start and crop) or ``"val"`` (first frames,
            centre crop).
        seed: seed of the random choices; item ``i`` is a pure function of ``(seed, i)``.

    Masks: ``.npz`` holding a boolean ``(T, H, W)`` (or ``(1, H, W)``, broadcast over time)
    array under key ``mask``, or a video / image where white (>= 128 in any channel; 1 for a 0/1 mask) marks
    edited pixels. Resized with nearest neighbour.

    Items: ``{"source": (3, T, H, W), "target": (3, T, H, W) (when present), "mask":
    (1, T, H, W) float in {0, 1} (when the item has one), "instruction": str, "id": str,
    "category": str}``; videos float32 in [-1, 1].

    Raises:
        ManifestError: bad JSON / CSV, a missing field or a missing file (names file and line).
    """

    def __init__(
        self,
        manifests: list[str],
        frames: int | None = 9,
        stride: int = 1,
        size: tuple[int, int] = (32, 32),
        require_target: bool = True,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        if isinstance(manifests, (str, Path)):
            manifests = [manifests]
        if frames is not None and not is_valid_frame_count(frames):
            raise ValueError(f"EditPairs: frames must be 1 + 4k or None, got {frames}")
        if stride < 1:
            raise ValueError(f"EditPairs: stride must be >= 1, got {stride}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"EditPairs: size must be (H, W) with positive sides, got {size}")
        self.frames = frames
        self.stride = stride
        self.size = (int(size[0]), int(size[1]))
        self.require_target = require_target
        self.split = split_check(split, "EditPairs")
        self.seed = int(seed)
        self.pairs: list[EditPair] = []
        for manifest in manifests:
            self.pairs.extend(self._parse(Path(manifest)))
        if not self.pairs:
            raise ValueError(f"EditPairs: the manifests {list(manifests)} list no items")

    def _parse(self, manifest: Path) -> list[EditPair]:
        pairs = []
        for line, row in read_manifest(manifest):
            if manifest.suffix.lower() == ".txt":
                raise ManifestError(manifest, None, "edit pairs need a .jsonl or .csv manifest")
            source = resolve_file(
                required_field(row, "source", manifest, line), "source", manifest, line
            )
            instruction = required_field(row, "instruction", manifest, line)
            target = None
            if self.require_target or row.get("target"):
                field = required_field(row, "target", manifest, line)
                target = resolve_file(field, "target", manifest, line)
            mask = None
            if row.get("mask"):
                mask = resolve_file(
                    required_field(row, "mask", manifest, line), "mask", manifest, line
                )
            pair = EditPair(
                source=source,
                target=target,
                instruction=instruction,
                id=str(row.get("id") or f"{manifest.stem}:{line}"),
                category=str(row.get("category") or ""),
                mask=mask,
            )
            if target is not None and (target.suffix.lower() in IMAGE_SUFFIXES) != pair.is_image:
                raise ManifestError(
                    manifest, line, "source and target must both be images or both be videos"
                )
            pairs.append(pair)
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def item_path(self, index: int) -> str:
        """Source path of item ``index``."""
        return str(self.pairs[index].source)

    def _window(self, index: int, available: int) -> tuple[int, int, int]:
        """``(start, stride, frames)`` for a pair whose shorter video has ``available`` frames."""
        pair = self.pairs[index]
        if pair.is_image:
            return 0, 1, 1
        frames = self.frames if self.frames is not None else snap_frames(available)
        stride = self.stride
        if frames > 1:
            fitting = (available - 1) // (frames - 1)
            if fitting < 1:
                raise VideoReadError(
                    pair.source, f"the pair has {available} frames, fewer than frames={frames}"
                )
            stride = min(stride, fitting)
        span = (frames - 1) * stride + 1
        if self.split == "val":
            return 0, stride, frames
        start = int(seeded_rng(self.seed, "window", index).integers(0, available - span + 1))
        return start, stride, frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"EditPairs index {index} out of range [0, {len(self)})")
        pair = self.pairs[index]
        info = probe_video(pair.source)
        available = info.frames
        if pair.target is not None:
            available = min(available, probe_video(pair.target).frames)
        start, stride, frames = self._window(index, available)
        scaled = resize_cover(info.height, info.width, self.size)
        rng = None if self.split == "val" else seeded_rng(self.seed, "crop", index)
        top, left = crop_box(scaled, self.size, rng)
        height, width = self.size

        def load(path: Path) -> torch.Tensor:
            video, _ = read_video(path, num_frames=frames, start=start, stride=stride, size=scaled)
            if video.shape[0] != frames:
                raise VideoReadError(path, f"decoded {video.shape[0]} frames, expected {frames}")
            return to_model_video(video[:, top : top + height, left : left + width].contiguous())

        item: dict[str, torch.Tensor | str] = {"source": load(pair.source)}
        if pair.target is not None:
            item["target"] = load(pair.target)
        if pair.mask is not None:
            mask = self._load_mask(pair.mask, start, stride, frames, scaled)
            item["mask"] = mask[:, :, top : top + height, left : left + width].contiguous()
        item.update(instruction=pair.instruction, id=pair.id, category=pair.category)
        return item

    def _load_mask(
        self, path: Path, start: int, stride: int, frames: int, scaled: tuple[int, int]
    ) -> torch.Tensor:
        """The mask's frames ``start, start + stride, ...`` as float ``(1, frames, h', w')``."""
        if path.suffix.lower() == ".npz":
            with np.load(path) as archive:
                if "mask" not in archive:
                    raise ValueError(f"mask file {path} has no array named 'mask'")
                array = np.asarray(archive["mask"])
            if array.ndim != 3:
                raise ValueError(f"mask file {path}: 'mask' must be (T, H, W), got {array.shape}")
            edited = torch.from_numpy(array != 0)
        else:
            still = probe_video(path).frames == 1
            video, _ = read_video(
                path,
                num_frames=1 if still else frames,
                start=0 if still else start,
                stride=stride,
            )
            # a 0/1 mask (max value 1) marks edits with 1; otherwise white (>= 128) does
            level = 1 if int(video.max()) <= 1 else _MASK_LEVEL
            edited = (video >= level).any(dim=-1)
            start, stride = 0, 1
        if edited.shape[0] == 1:
            edited = edited.expand(frames, -1, -1)
        else:
            edited = edited[start : start + (frames - 1) * stride + 1 : stride]
            if edited.shape[0] != frames:
                raise ValueError(
                    f"mask file {path} covers {edited.shape[0]} of the {frames} frames needed"
                )
        return F.interpolate(edited[None].float(), size=scaled, mode="nearest-exact")
