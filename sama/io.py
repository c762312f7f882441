"""Video read / write / probe on PyAV (FFmpeg), plus the frame-count and layout helpers.

Layouts:

- decoded video (``read_video``, ``write_video``): ``(T, H, W, 3)`` uint8 RGB;
- model video (``to_model_video``, ``from_model_video``): ``(3, T, H, W)`` or
  ``(B, 3, T, H, W)`` float32 in [-1, 1].

Anything FFmpeg can demux and decode is readable: MP4/MKV/WebM/MOV/AVI..., GIF (as a video),
and still images (PNG, JPEG, WebP, BMP, ...) as 1-frame videos. Every failure to read -
missing, empty, truncated, non-video or undecodable files - raises :class:`VideoReadError`,
which names the path and the reason, so a data loader can skip the file.
"""

from __future__ import annotations

import math
import os
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

# FFmpeg demuxers that happily "decode" files that are not videos (``tty`` renders any text
# file, e.g. ``notes.txt``, as ANSI art); we refuse them.
_NON_VIDEO_FORMATS = frozenset({"tty"})

# swscale widens its kernel when it shrinks an image, so bicubic is antialiased on downscale.
_RESIZE_INTERPOLATION = "BICUBIC"

# Wan's VAE compresses time 4x causally: the first frame alone, then 4 frames per latent.
WAN_TEMPORAL_FACTOR = 4


class VideoReadError(RuntimeError):
    """A video (or image) file could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file's first video stream.

    ``frames`` comes from the container metadata when it has it, else from counting packets;
    ``fps`` is the average frame rate; ``duration`` is in seconds; ``codec`` is FFmpeg's
    decoder name (``"h264"``, ``"png"``, ...).
    """

    frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration: float


# ---------------------------------------------------------------------------------------------
# reading


def _check_file(path: str | os.PathLike[str]) -> Path:
    """Refuse what FFmpeg should never be handed: missing paths, folders, FIFOs, empty files."""
    file = Path(path)
    if not file.exists():
        raise VideoReadError(file, "file does not exist")
    if not file.is_file():
        raise VideoReadError(file, "not a regular file")
    if file.stat().st_size == 0:
        raise VideoReadError(file, "file is empty (0 bytes)")
    return file


def _reason(error: Exception) -> str:
    """FFmpeg's own words for an error, without the path it repeats."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open ``path`` and return it with its first video stream (threaded decode enabled)."""
    try:
        container = av.open(str(path), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoReadError(path, f"not a readable media file ({_reason(error)})") from error
    if container.format.name in _NON_VIDEO_FORMATS:
        container.close()
        raise VideoReadError(path, "a text file, not a video")
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "no video stream (audio-only or data file)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _frame_rate(stream: av.VideoStream, path: Path) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoReadError(path, "the video stream declares no frame rate")
    return Fraction(rate)


def _decoded(
    container: av.container.InputContainer, stream: av.VideoStream, path: Path
) -> Iterator[av.VideoFrame]:
    """Decode ``stream`` from the current position, in presentation (pts) order.

    FFmpeg's decoders hold B-frames back and emit frames sorted by pts; packets the demuxer
    flags as corrupt (a file cut short in the middle of a frame) raise instead of decoding
    into garbage.
    """
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                raise VideoReadError(
                    path, f"corrupt packet at pts {packet.pts} (file truncated or damaged)"
                )
            yield from packet.decode()
    except av.error.FFmpegError as error:
        raise VideoReadError(path, f"decoding failed ({_reason(error)})") from error


class _Unseekable(Exception):
    """The container refused to seek; read it by decoding forward from frame 0."""


def _numbered_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    path: Path,
    target: int,
    rate: Fraction,
) -> Iterator[tuple[int, av.VideoFrame]] | None:
    """Frames with their indices, decoded from the keyframe at or before frame ``target``.

    Frame ``i`` is the one presented at ``start_time + i / fps``. From frame 0 the frames are
    simply counted; after a seek the first frame gets its index from its pts and the following
    ones are counted (exact for constant frame rate). Returns ``None`` when the seek landed
    after ``target`` (with B-frames a keyframe's decode time can precede its presentation
    time), or found no frame or no timestamp: the caller retries from further back, and at
    worst decodes from frame 0. Raises :class:`_Unseekable` when the container cannot seek.
    """
    if target == 0:
        return enumerate(_decoded(container, stream, path))
    time_base = stream.time_base
    origin = stream.start_time or 0
    # Half a frame early, so integer rounding of timestamps never skips the target frame.
    seek_pts = origin + math.floor((target - Fraction(1, 2)) / (rate * time_base))
    try:
        container.seek(max(seek_pts, origin), stream=stream, backward=True, any_frame=False)
    except (av.error.FFmpegError, OSError) as error:
        # SWF and some raw / streamed containers cannot seek: the caller decodes forward
        raise _Unseekable(_reason(error)) from error
    frames = _decoded(container, stream, path)
    first = next(frames, None)
    if first is None or first.pts is None:
        return None
    first_index = round((first.pts - origin) * time_base * rate)
    if first_index > target:
        return None

    def numbered() -> Iterator[tuple[int, av.VideoFrame]]:
        yield first_index, first
        for offset, frame in enumerate(frames, start=1):
            yield first_index + offset, frame

    return numbered()


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """One frame as ``(H, W, 3)`` uint8 RGB, resized by swscale in the same pass when asked."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    height, width = size
    resized = frame.reformat(
        width=width, height=height, format="rgb24", interpolation=_RESIZE_INTERPOLATION
    )
    return resized.to_ndarray()


# Frames decoded but not yet converted to RGB, at most: bounds the memory the converter's lag
# holds (decoding runs ahead of the conversion).
_MAX_PENDING = 16


def _convert_kept(
    numbered: Iterator[tuple[int, av.VideoFrame]],
    start: int,
    stride: int,
    last: float,
    size: tuple[int, int] | None,
) -> tuple[list[np.ndarray], int]:
    """RGB arrays of frames ``start, start + stride, ...`` up to ``last``, and the frames seen.

    The YUV -> RGB conversion (swscale, which releases the GIL) runs in a helper thread while
    this one demuxes and decodes the next frames, as the ffmpeg command line's filter thread
    does; the frames come back in order and are the same as converting them one by one.
    """
    kept: list[np.ndarray] = []
    pending: deque[Future[np.ndarray]] = deque()
    seen = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read_video") as converter:
        try:
            for index, frame in numbered:
                seen = index + 1
                if index >= start and (index - start) % stride == 0:
                    pending.append(converter.submit(_to_rgb, frame, size))
                    if len(pending) > _MAX_PENDING:
                        kept.append(pending.popleft().result())
                if index >= last:
                    break
            kept += [future.result() for future in pending]
        finally:
            for future in pending:
                future.cancel()
    return kept, seen


def read_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int | None = None,
    start: int = 0,
    stride: int = 1,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, float]:
    """Decode frames ``start, start + stride, ...`` of a video (or image / GIF) file.

    Args:
        path: any file FFmpeg can decode; extra streams (audio, subtitles) are ignored.
        num_frames: how many frames to return; ``None`` reads to the end. When the file ends
            first, the frames that exist are returned (``T < num_frames``): check ``T``, or
            plan the window with :func:`probe_video` and :func:`snap_frames`.
        start: index of the first frame. For ``start > 0`` the reader seeks to the keyframe at
            or before it and decodes forward, so reading a short window from the middle of a
            long file costs one GOP, not the whole prefix; a container that cannot seek (SWF,
            ...) is decoded forward from its first frame instead. Frame ``i`` is the frame presented
            at ``i / fps`` seconds after the stream start: the ``i``-th frame for constant
            frame rate files, approximate for variable frame rate ones.
        stride: keep every ``stride``-th frame.
        size: ``(H, W)`` to resize every frame to (the aspect ratio is not preserved). Resizing
            is done by FFmpeg's swscale with bicubic interpolation, in the same pass as the
            YUV -> RGB conversion; swscale widens the kernel on downscale, so it is antialiased.

    Returns:
        ``(frames, fps)``: ``frames`` uint8 ``(T, H, W, 3)`` RGB in presentation (pts) order,
        ``fps`` the stream's average frame rate (still images report FFmpeg's default, 25).

    Raises:
        ValueError: an argument is out of range.
        VideoReadError: the file is missing, empty, not a video, truncated or undecodable, or
            ``start`` is at or past its last frame.
    """
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    file = _check_file(path)
    last = math.inf if num_frames is None else start + stride * (num_frames - 1)

    target, back_off = start, 0
    while True:
        container, stream = _open_video(file)
        with container:
            fps = _frame_rate(stream, file)
            try:
                numbered = _numbered_frames(container, stream, file, target, fps)
            except _Unseekable:
                target = 0  # the container cannot seek: decode forward from the start
                continue
            if numbered is not None:
                kept, seen = _convert_kept(numbered, start, stride, last, size)
                break
        # The seek landed late or found nothing: seek again from further back (1 s, 2 s, 4 s...).
        back_off = 2 * back_off or math.ceil(fps)
        target = max(0, start - back_off)
    if seen == 0:
        raise VideoReadError(file, "the video stream holds no decodable frame")
    if not kept:
        plural = "s" * (seen != 1)
        raise VideoReadError(
            file, f"start frame {start} is past the end (the video has {seen} frame{plural})"
        )
    return torch.from_numpy(np.stack(kept)), float(fps)


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe the first video stream of ``path`` without decoding pixels.

    ``frames`` is the container's declared count when present (MP4, MOV, ...), else the number
    of packets demuxed (images, GIF, MKV/WebM without a count); for still images it is 1.
    Only headers (and packets, when counting) are read, so a file cut short after its index
    (an MP4 with the index first) probes fine and fails in :func:`read_video`.

    Raises:
        VideoReadError: as :func:`read_video`.
    """
    file = _check_file(path)
    container, stream = _open_video(file)
    with container:
        fps = _frame_rate(stream, file)
        frames = stream.frames
        if frames <= 0:
            try:
                frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            except av.error.FFmpegError as error:
                raise VideoReadError(file, f"demuxing failed ({_reason(error)})") from error
        if frames <= 0:
            raise VideoReadError(file, "the video stream holds no frames")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / float(fps)
        return VideoInfo(
            frames=frames,
            fps=float(fps),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            duration=duration,
        )


# ---------------------------------------------------------------------------------------------
# writing


def _uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """``frames`` as a C-contiguous numpy uint8 ``(T, H, W, 3)`` array, or a ValueError."""
    array = (
        frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    )
    if array.dtype != np.uint8:
        raise ValueError(
            f"write_video needs uint8 frames, got {array.dtype}; convert with from_model_video"
        )
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ValueError(
            f"write_video needs frames of shape (T, H, W, 3) with T >= 1, got {tuple(array.shape)}"
        )
    return np.ascontiguousarray(array)


def write_video(
    path: str | os.PathLike[str], frames: torch.Tensor | np.ndarray, fps: float, *, crf: int = 18
) -> None:
    """Write uint8 ``(T, H, W, 3)`` RGB frames as an H.264 (libx264, yuv420p) MP4.

    yuv420p needs even sides: an odd height or width is padded by one row / column that
    repeats the last one (edge replication), so a ``(T, 5, 7, 3)`` input reads back as
    ``(T, 6, 8, 3)``. Nothing else about the padding is recorded.

    The file is written under a hidden temporary name in the destination folder and moved into
    place with ``os.replace`` when complete: ``path`` never holds a half-written video, and the
    temporary file is removed when writing fails. Missing parent folders are created.

    Args:
        path: destination, must end in ``.mp4``.
        frames: uint8 ``(T, H, W, 3)`` RGB, a torch tensor or a numpy array.
        fps: frame rate; fractional rates such as ``30000 / 1001`` are kept exactly.
        crf: x264 constant rate factor, 0 (lossless YUV) to 51; 18 is visually lossless.
    """
    destination = Path(path)
    if destination.suffix.lower() != ".mp4":
        raise ValueError(f"write_video writes H.264 MP4; give {destination} a .mp4 suffix")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    array = _uint8_frames(frames)
    _, height, width, _ = array.shape
    if height % 2 or width % 2:
        array = np.pad(array, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")

    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with av.open(str(temporary), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width = array.shape[2]
            stream.height = array.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for index, rgb in enumerate(array):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# frame counts and layouts


def is_valid_frame_count(n: int, *, factor: int = WAN_TEMPORAL_FACTOR) -> bool:
    """Whether ``n`` frames fit a causal video VAE that compresses time ``factor`` x.

    Wan's VAE encodes the first frame alone and then every ``factor`` = 4 frames into one
    latent frame, so valid clip lengths are ``1 + 4k``: 1, 5, 9, ..., 17, ..., 81.
    """
    return n >= 1 and (n - 1) % factor == 0


def snap_frames(n: int, *, mode: str = "down", factor: int = WAN_TEMPORAL_FACTOR) -> int:
    """The valid frame count (``1 + factor * k``, see :func:`is_valid_frame_count`) next to ``n``.

    Args:
        n: a frame count, ``>= 1``.
        mode: ``"down"``: the largest valid count ``<= n`` (never asks for frames a clip lacks);
            ``"up"``: the smallest valid count ``>= n``; ``"nearest"``: the closer of the two,
            ties going down.
    """
    if n < 1:
        raise ValueError(f"a video has at least 1 frame, got n={n}")
    down = 1 + (n - 1) // factor * factor
    up = down if down == n else down + factor
    if mode == "down":
        return down
    if mode == "up":
        return up
    if mode == "nearest":
        return down if n - down <= up - n else up
    raise ValueError(f"mode must be 'down', 'up' or 'nearest', got {mode!r}")


def to_model_video(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` frames -> float32 ``(3, T, H, W)`` in [-1, 1] (``x / 127.5 - 1``)."""
    video = torch.as_tensor(frames)
    if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(
            f"to_model_video needs uint8 (T, H, W, 3) frames, got {video.dtype} {tuple(video.shape)}"
        )
    return video.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def from_model_video(video: torch.Tensor) -> torch.Tensor:
    """Float video in [-1, 1] -> uint8 RGB frames, clamped and rounded to the nearest level.

    ``(3, T, H, W)`` gives ``(T, H, W, 3)``; a batch ``(B, 3, T, H, W)`` gives
    ``(B, T, H, W, 3)``. The result is on the CPU, detached from the graph.
    """
    if video.ndim not in (4, 5) or video.shape[-4] != 3 or not video.is_floating_point():
        raise ValueError(
            f"from_model_video needs a float (3, T, H, W) or (B, 3, T, H, W) video, got {video.dtype} {tuple(video.shape)}"
        )
    levels = video.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
    return levels.movedim(-4, -1).cpu()
