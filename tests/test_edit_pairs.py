"""EditPairs: manifests, relative paths, errors, image pairs, identical crops of source/target/mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.edit_pairs import EditPairs, ManifestError
from sama.io import write_video

WIDTH = 48


def _column_video(path: Path, frames: int = 9) -> None:
    """Gray frames (16 x 48) whose level at column x is ``5 * x`` (lossless)."""
    row = (np.arange(WIDTH) * 5).astype(np.uint8)
    video = np.broadcast_to(row[None, None, :, None], (frames, 16, WIDTH, 3)).copy()
    write_video(path, video, fps=10, crf=0)


def _columns(video) -> np.ndarray:
    """Source columns recovered from the gray levels of a ``(3, T, H, W)`` output."""
    return np.rint((video[0, 0, 0].numpy() + 1) * 127.5 / 5).astype(int)


@pytest.fixture()
def pair_dir(tmp_path: Path) -> Path:
    (tmp_path / "videos").mkdir()
    _column_video(tmp_path / "videos" / "src.mp4")
    _column_video(tmp_path / "videos" / "tgt.mp4")
    mask = np.zeros((9, 16, WIDTH), bool)
    mask[:, :, ::7] = True
    np.savez(tmp_path / "videos" / "mask.npz", mask=mask)
    rows = [
        {
            "source": "videos/src.mp4",
            "target": "videos/tgt.mp4",
            "instruction": "add snow",
            "id": "a",
            "category": "weather",
            "mask": "videos/mask.npz",
        },
        {"source": "videos/src.mp4", "target": "videos/tgt.mp4", "instruction": "no mask"},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_jsonl_pairs_crop_source_target_and_mask_identically(pair_dir: Path) -> None:
    pairs = EditPairs([str(pair_dir / "pairs.jsonl")], frames=5, size=(16, 16), seed=3)
    for index in range(2):
        item = pairs[index]
        assert item["source"].shape == item["target"].shape == (3, 5, 16, 16)
        columns = _columns(item["source"])
        left = int(columns[0])
        assert columns.tolist() == list(range(left, left + 16))
        assert _columns(item["target"]).tolist() == columns.tolist()
    item = pairs[0]
    assert item["mask"].shape == (1, 5, 16, 16)
    expected = (_columns(item["source"]) % 7 == 0).astype(np.float32)
    assert np.array_equal(item["mask"][0, 2, 5].numpy(), expected)
    assert (item["instruction"], item["id"], item["category"]) == ("add snow", "a", "weather")
    assert "mask" not in pairs[1] and pairs[1]["id"] == "pairs:2"
    val = EditPairs([str(pair_dir / "pairs.jsonl")], frames=5, size=(16, 16), split="val")
    assert _columns(val[0]["source"])[0] == 16  # centre crop of 48 columns


def test_csv_manifest_and_optional_target(pair_dir: Path) -> None:
    (pair_dir / "pairs.csv").write_text("source,instruction,target\nvideos/src.mp4,make it red,\n")
    with pytest.raises(ManifestError, match=r"pairs.csv:2: missing field 'target'"):
        EditPairs([str(pair_dir / "pairs.csv")])
    bench = EditPairs([str(pair_dir / "pairs.csv")], frames=9, size=(16, 16), require_target=False)
    item = bench[0]
    assert "target" not in item and item["source"].shape == (3, 9, 16, 16)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"source": "videos/src.mp4", "target": "videos/tgt.mp4", "instruction": "x"}\n{oops\n',
            r"pairs.jsonl:2: invalid JSON",
        ),
        (
            '{"source": "videos/src.mp4", "target": "videos/tgt.mp4"}\n',
            r"pairs.jsonl:1: missing field 'instruction'",
        ),
        (
            '{"source": "videos/nope.mp4", "target": "videos/tgt.mp4", "instruction": "x"}\n',
            r"pairs.jsonl:1: source file .*nope.mp4 does not exist",
        ),
    ],
)
def test_manifest_errors_name_file_and_line(pair_dir: Path, text: str, message: str) -> None:
    (pair_dir / "pairs.jsonl").write_text(text)
    with pytest.raises(ManifestError, match=message):
        EditPairs([str(pair_dir / "pairs.jsonl")])


def test_image_pairs_are_one_frame_videos_with_image_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :15] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    (tmp_path / "img.csv").write_text("source,target,instruction,mask\ns.png,t.jpg,swap,m.png\n")
    pairs = EditPairs([str(tmp_path / "img.csv")], frames=9, size=(20, 30), split="val")
    item = pairs[0]
    assert item["source"].shape == item["target"].shape == (3, 1, 20, 30)
    assert item["mask"].shape == (1, 1, 20, 30)
    assert item["mask"][0, 0, :, :15].min() == 1 and item["mask"][0, 0, :, 15:].max() == 0
    source = np.asarray(Image.open(tmp_path / "s.png"))
    assert np.array_equal(
        np.rint((item["source"][:, 0].permute(1, 2, 0).numpy() + 1) * 127.5), source
    )


def test_image_and_video_cannot_be_mixed_in_a_pair(pair_dir: Path) -> None:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(pair_dir / "x.png")
    (pair_dir / "mixed.jsonl").write_text(
        json.dumps({"source": "x.png", "target": "videos/tgt.mp4", "instruction": "x"}) + "\n"
    )
    with pytest.raises(ManifestError, match="mixed.jsonl:1: source and target must both"):
        EditPairs([str(pair_dir / "mixed.jsonl")])


def test_zero_one_image_mask_marks_ones_as_edited(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("s.png", "t.png"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    (tmp_path / "m.csv").write_text("source,target,instruction,mask\ns.png,t.png,x,m.png\n")
    item = EditPairs([str(tmp_path / "m.csv")], size=(16, 16), split="val")[0]
    assert item["mask"][0, 0, 4:8].min() == 1 and item["mask"].sum() == 4 * 16
