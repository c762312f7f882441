"""Images of videos: PNG encoding, frame strips and the source | edit | target overview.

Used by the evaluation report (thumbnails), the demo (``overview.png``), the judge (frames sent
as PNG) and callbacks. Layouts: videos uint8 ``(T, H, W, 3)``; images uint8 ``(H, W, 3)`` RGB or
``(H, W)`` gray.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sama.files import atomic_write_bytes

__all__ = ["edit_overview", "encode_png", "frame_strip", "write_png"]


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 image ``(H, W, 3)`` (RGB) or ``(H, W)`` (gray) as PNG bytes."""
    image = np.asarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(
            f"encode_png needs uint8 (H, W, 3) or (H, W); got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    color_type = 2 if image.ndim == 3 else 0
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W, 3)`` image as a PNG file; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, encode_png(image))
    return path


def frame_strip(video: np.ndarray, n: int = 4, gap: int = 2) -> np.ndarray:
    """``n`` frames of a uint8 video ``(T, H, W, 3)``, evenly spaced, side by side.

    Returns uint8 ``(H, n' * W + (n' - 1) * gap, 3)`` with ``n' = min(n, T)`` and white gaps.
    """
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frame_strip needs uint8 (T, H, W, 3); got {video.dtype} {video.shape}")
    if n < 1:
        raise ValueError(f"frame_strip needs n >= 1; got {n}")
    total, height = video.shape[0], video.shape[1]
    count = min(n, total)
    indices = [round(i * (total - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for k, index in enumerate(indices):
        if k:
            parts.append(spacer)
        parts.append(video[index])
    return np.concatenate(parts, axis=1)


def edit_overview(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    frames: int = 3,
    scale: int = 4,
) -> np.ndarray:
    """One picture of edits: a header line, then per row a caption line and
    ``source | edit | target`` strips.

    Each row is ``(caption, source, edit, target)`` with uint8 videos ``(T, H, W, 3)`` of one
    size (``target`` may be ``None``: its panel stays white). Strips show ``frames`` evenly
    spaced frames, nearest-neighbour upscaled ``scale`` times. Returns uint8 ``(H', W', 3)``.
    """
    if not rows:
        raise ValueError("edit_overview needs at least one row")
    gap, text_h = 8, 14
    panels: list[np.ndarray] = []
    for caption, source, edit, target in rows:
        strips = [frame_strip(v, frames) for v in (source, edit)]
        strips.append(
            frame_strip(target, frames) if target is not None else np.full_like(strips[0], 255)
        )
        if len({s.shape for s in strips}) != 1:
            raise ValueError(f"edit_overview: row {caption!r} has videos of different sizes")
        spacer = np.full((strips[0].shape[0], gap // 2, 3), 255, np.uint8)
        row = np.concatenate([strips[0], spacer, strips[1], spacer, strips[2]], axis=1)
        row = row.repeat(scale, axis=0).repeat(scale, axis=1)
        band = Image.new("RGB", (row.shape[1], text_h), "white")
        ImageDraw.Draw(band).text((2, 1), caption, fill=(0, 0, 0))
        panels += [np.asarray(band), row, np.full((gap, row.shape[1], 3), 255, np.uint8)]
    strip_w = (panels[1].shape[1] - gap * scale) // 3  # panels[1]: the first row's strips
    header = Image.new("RGB", (panels[1].shape[1], text_h), "white")
    for k, name in enumerate(("source", "edit", "target")):
        ImageDraw.Draw(header).text((2 + k * (strip_w + gap // 2 * scale), 1), name, fill=(0, 0, 0))
    panels.insert(0, np.asarray(header))
    width = max(p.shape[1] for p in panels)
    padded = [
        np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels
    ]
    return np.concatenate(padded, axis=0)
