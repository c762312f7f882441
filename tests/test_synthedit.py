"""SynthEdit: determinism, exact masks, the held-out rule, datasets and the on-disk format."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.synthedit import (
    BACKGROUND_COLORS,
    CATEGORIES,
    COLORS,
    HELDOUT_COMBOS,
    SHAPES,
    SIZES,
    SynthEditClips,
    SynthEditGenerator,
    SynthEditImagePairs,
    SynthEditPairs,
    SynthEditSample,
    heldout_combos_in,
    synth_main,
    write_dataset,
)
from datamodules.synthedit.scenes import background_phrase
from datamodules.synthedit.world import object_coverage, render_scene
from sama.io import read_video, to_model_video

PER_CATEGORY = 24
LOCAL = ("recolor", "replace", "remove", "add")


@pytest.fixture(scope="module")
def train_samples() -> list[SynthEditSample]:
    generator = SynthEditGenerator(size=(32, 32), frames=9, seed=0, split="train")
    return [generator.sample(index) for index in range(PER_CATEGORY * len(CATEGORIES))]


@pytest.fixture(scope="module")
def heldout_samples() -> list[SynthEditSample]:
    generator = SynthEditGenerator(size=(32, 32), frames=9, seed=0, split="heldout")
    return [generator.sample(index) for index in range(10 * len(CATEGORIES))]


def changed(sample: SynthEditSample) -> torch.Tensor:
    """Pixels where target and source differ in any channel, bool (T, H, W)."""
    return (sample.target != sample.source).any(dim=-1)


def by_category(samples: list[SynthEditSample], category: str) -> list[SynthEditSample]:
    chosen = [sample for sample in samples if sample.category == category]
    assert chosen, f"no {category} sample"
    return chosen


# ---------------------------------------------------------------------------------------------
# the world


def test_shape_coverage_integrates_to_the_analytic_area() -> None:
    size = (256, 256)
    radius = SIZES["large"] * 256
    expected = {
        "circle": math.pi,
        "square": 1.5**2,
        "ring": math.pi * (1.0**2 - 0.44**2),
        "cross": 2 * (1.9 * 0.64) - 0.64**2,
        "triangle": 3 * math.sqrt(3) / 4 * 1.1**2,
    }
    for shape in SHAPES:
        obj = {
            "uid": 0,
            "shape": shape,
            "color": "red",
            "size": "large",
            "position": [0.5, 0.5],
            "velocity": [0.0, 0.0],
            "angle": 0.3,
            "spin": 0.0,
            "pulse": 0.0,
            "pulse_period": 2.0,
            "pulse_phase": 0.0,
        }
        area = float(object_coverage(obj, size, 1).sum()) / radius**2
        if shape == "star":
            assert math.pi * 0.45**2 < area < math.pi * 1.1**2 / 2, area
        else:
            assert area == pytest.approx(expected[shape], rel=0.01), shape


def test_objects_are_antialiased_and_composited_back_to_front() -> None:
    still = {"velocity": [0.0, 0.0], "angle": 0.0, "spin": 0.0, "pulse": 0.0}
    still.update({"pulse_period": 2.0, "pulse_phase": 0.0, "position": [0.5, 0.5]})
    back = {"uid": 0, "shape": "square", "color": "blue", "size": "large", **still}
    front = {"uid": 1, "shape": "circle", "color": "yellow", "size": "small", **still}
    scene = {"background": {"kind": "solid", "colors": ["white"]}, "objects": [back, front]}
    rendering = render_scene(scene, (32, 32), 1)
    frame = rendering.frames[0]
    assert tuple(frame[16, 16]) == COLORS["yellow"]
    assert tuple(frame[12, 11]) == COLORS["blue"]
    assert tuple(frame[0, 0]) == BACKGROUND_COLORS["white"]
    # Edge pixels blend: more distinct colours than the three flat ones.
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 3
    total = sum(rendering.visibility.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    assert rendering.visibility[0][0, 16, 16] == 0.0


# ---------------------------------------------------------------------------------------------
# the generator


def test_same_index_is_bit_exact_and_indices_differ() -> None:
    first = SynthEditGenerator(seed=3, split="train")
    again = SynthEditGenerator(seed=3, split="train")
    for index in (0, 5, 123):
        a, b = first.sample(index), again.sample(index)
        assert torch.equal(a.source, b.source) and torch.equal(a.target, b.target)
        assert torch.equal(a.mask, b.mask)
        assert (a.instruction, a.scene, a.target_scene) == (b.instruction, b.scene, b.target_scene)
        assert a.id == f"train-3-{index:06d}"
        assert a.source.dtype == torch.uint8 and a.source.shape == (9, 32, 32, 3)
        assert a.mask.dtype == torch.bool and a.mask.shape == (9, 32, 32)
        json.dumps([a.scene, a.target_scene, a.edits])
    sources = [first.sample(index).source for index in range(14)]
    for i in range(len(sources)):
        for j in range(i):
            assert not torch.equal(sources[i], sources[j]), (i, j)


def test_seeds_and_splits_draw_different_scenes() -> None:
    scenes = {
        (split, seed): SynthEditGenerator(seed=seed, split=split).sample(2).scene
        for split in ("train", "val", "test", "heldout")
        for seed in (0, 1)
    }
    rendered = [json.dumps(scene, sort_keys=True) for scene in scenes.values()]
    assert len(set(rendered)) == len(rendered)


def test_every_category_appears_with_several_phrasings(
    train_samples: list[SynthEditSample],
) -> None:
    assert {sample.category for sample in train_samples} == set(CATEGORIES)
    names = [*COLORS, *BACKGROUND_COLORS, *SHAPES, *SIZES, "horizontal", "vertical", "diagonal"]
    words = re.compile(r"\b(" + "|".join(names) + r")\b")
    for category in CATEGORIES:
        skeletons = {words.sub("_", s.instruction) for s in by_category(train_samples, category)}
        if category == "add":  # the placement phrase varies too; drop it
            skeletons = {re.sub(r" (in|moving) .*", "", skeleton) for skeleton in skeletons}
        assert len(skeletons) >= 3, (category, skeletons)


def test_instructions_name_the_edited_objects(train_samples: list[SynthEditSample]) -> None:
    for sample in train_samples:
        text = sample.instruction
        for record in sample.edits:
            kind = record["category"]
            if kind == "recolor":
                assert f"{record['from']} {record['shape']}" in text and record["to"] in text
            elif kind == "replace":
                assert f"{record['color']} {record['from']}" in text and record["to"] in text
            elif kind in ("remove", "add"):
                assert f"{record['color']} {record['shape']}" in text
            elif kind == "background":
                assert background_phrase(record["to"]) in text
        if sample.category == "hybrid":
            assert len({record["category"] for record in sample.edits}) == 2
        assert sample.source_caption != sample.target_caption


def test_objects_in_a_scene_have_distinct_colors(train_samples: list[SynthEditSample]) -> None:
    for sample in train_samples:
        for scene in (sample.scene, sample.target_scene):
            colors = [obj["color"] for obj in scene["objects"]]
            assert len(colors) == len(set(colors)) and 1 <= len(sample.scene["objects"]) <= 3


def test_target_equals_source_outside_the_mask(train_samples: list[SynthEditSample]) -> None:
    for sample in train_samples:
        assert changed(sample).any(), sample.id
        assert not (changed(sample) & ~sample.mask).any(), sample.id


def test_style_masks_everything_and_transforms_pixels(
    train_samples: list[SynthEditSample],
) -> None:
    for sample in by_category(train_samples, "style"):
        assert sample.mask.all()
        style = sample.edits[0]["style"]
        target, source = sample.target.int(), sample.source.int()
        if style == "grayscale":
            assert (target[..., 0] == target[..., 1]).all() and (
                target[..., 1] == target[..., 2]
            ).all()
        elif style == "invert":
            assert torch.equal(target, 255 - source)
        elif style == "posterize":
            assert set(target.unique().tolist()) <= {0, 85, 170, 255}


def test_local_masks_are_tight(train_samples: list[SynthEditSample]) -> None:
    for category in LOCAL:
        for sample in by_category(train_samples, category):
            mask, diff = sample.mask, changed(sample)
            assert mask.float().mean() < 0.75
            if category == "replace":  # old and new shapes overlap where nothing changes
                assert diff.sum() >= 0.2 * mask.sum(), sample.id
                continue
            # Every masked pixel is at most one pixel away from a pixel that changed.
            near = F.max_pool2d(diff.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
            assert not (mask & ~near).any(), sample.id


def test_background_mask_is_where_the_background_shows(
    train_samples: list[SynthEditSample],
) -> None:
    for sample in by_category(train_samples, "background"):
        rendering = render_scene(sample.scene, (32, 32), 9)
        shows = torch.from_numpy(rendering.visibility["background"] > 0)
        assert torch.equal(sample.mask, shows), sample.id


def test_category_restriction_and_bad_arguments() -> None:
    generator = SynthEditGenerator(categories=["remove", "add"])
    assert [generator.sample(i).category for i in range(4)] == ["remove", "add"] * 2
    with pytest.raises(ValueError, match="split"):
        SynthEditGenerator(split="bogus")
    with pytest.raises(ValueError, match="categories"):
        SynthEditGenerator(categories=["paint"])
    with pytest.raises(ValueError, match="size"):
        SynthEditGenerator(size=(4, 4))
    with pytest.raises(IndexError):
        generator.sample(-1)


# ---------------------------------------------------------------------------------------------
# the held-out rule


def test_heldout_combos_are_a_fifth_of_all_and_cover_every_word() -> None:
    assert 0.15 <= len(HELDOUT_COMBOS) / (len(COLORS) * len(SHAPES)) <= 0.25
    assert {color for color, _ in HELDOUT_COMBOS} == set(COLORS)
    assert {shape for _, shape in HELDOUT_COMBOS} == set(SHAPES)


def test_heldout_combos_never_occur_in_train_val_test(
    train_samples: list[SynthEditSample],
) -> None:
    samples = list(train_samples)
    for split in ("val", "test"):
        generator = SynthEditGenerator(size=(16, 16), frames=5, split=split)
        samples += [generator.sample(index) for index in range(70)]
    assert len(samples) >= 300
    for sample in samples:
        assert not heldout_combos_in(sample.scene, sample.target_scene), sample.id
        text = " ".join((sample.instruction, sample.source_caption, sample.target_caption))
        for color, shape in HELDOUT_COMBOS:
            assert f"{color} {shape}" not in text, (sample.id, text)


def test_every_heldout_sample_shows_a_heldout_combo(
    heldout_samples: list[SynthEditSample],
) -> None:
    assert {sample.category for sample in heldout_samples} == set(CATEGORIES)
    for sample in heldout_samples:
        assert heldout_combos_in(sample.scene, sample.target_scene), sample.id
        if sample.category in ("recolor", "replace", "add"):
            record = sample.edits[0]
            combo = {
                "recolor": (record.get("to"), record.get("shape")),
                "replace": (record.get("color"), record.get("to")),
                "add": (record.get("color"), record.get("shape")),
            }[sample.category]
            assert combo in HELDOUT_COMBOS, sample.id
        assert not (changed(sample) & ~sample.mask).any(), sample.id


# ---------------------------------------------------------------------------------------------
# datasets


def test_pair_items_have_the_stream_layout() -> None:
    dataset = SynthEditPairs(num=3, size=(16, 24), frames=5, seed=1)
    assert len(dataset) == 3
    item = dataset[1]
    raw = dataset.sample_raw(1)
    assert set(item) == {"source", "target", "mask", "instruction", "id", "category"}
    for key in ("source", "target"):
        assert item[key].shape == (3, 5, 16, 24) and item[key].dtype == torch.float32
        assert item[key].min() >= -1.0 and item[key].max() <= 1.0
    assert torch.equal(item["source"], to_model_video(raw.source))
    assert item["mask"].shape == (1, 5, 16, 24) and item["mask"].dtype == torch.float32
    assert torch.equal(item["mask"][0] > 0.5, raw.mask)
    assert (item["instruction"], item["id"], item["category"]) == (
        raw.instruction,
        raw.id,
        raw.category,
    )
    with pytest.raises(IndexError):
        dataset[3]


def test_image_pairs_are_one_changed_frame_of_the_video_pair() -> None:
    images = SynthEditImagePairs(num=7, size=(16, 16), frames=5, seed=2)
    for index in range(len(images)):
        item = images[index]
        assert item["source"].shape == (3, 1, 16, 16) and item["mask"].shape == (1, 1, 16, 16)
        assert not torch.equal(item["source"], item["target"])
        raw = images.sample_raw(index)
        video = to_model_video(raw.source)
        frames = [k for k in range(5) if torch.equal(video[:, k : k + 1], item["source"])]
        assert frames, index
        assert torch.equal(images[index]["target"], item["target"])


def test_clips_serve_the_source_video_and_caption() -> None:
    clips = SynthEditClips(num=2, size=(16, 16), frames=5, categories=["recolor"])
    item = clips[0]
    assert set(item) == {"video", "caption"}
    assert item["video"].shape == (3, 5, 16, 16)
    assert item["caption"] == clips.sample_raw(0).source_caption


# ---------------------------------------------------------------------------------------------
# on disk


def test_write_dataset_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    manifest = write_dataset(out, 3, seed=4, split="val", size=(32, 32), frames=5, fps=8.0)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    generator = SynthEditGenerator(size=(32, 32), frames=5, seed=4, split="val")
    assert len(lines) == 3
    for index, record in enumerate(lines):
        sample = generator.sample(index)
        assert set(record) == {
            "id",
            "source",
            "target",
            "instruction",
            "category",
            "mask",
            "source_caption",
            "target_caption",
        }
        assert (record["id"], record["instruction"]) == (sample.id, sample.instruction)
        for key in ("source", "target", "mask"):
            assert not Path(record[key]).is_absolute() and (out / record[key]).is_file()
        with np.load(out / record["mask"]) as data:
            assert data["mask"].dtype == bool
            assert np.array_equal(data["mask"], sample.mask.numpy())
        for key in ("source", "target"):
            video, fps = read_video(out / record[key])
            assert video.shape == (5, 32, 32, 3) and fps == pytest.approx(8.0)
            error = (video.float() - getattr(sample, key).float()).abs().mean()
            assert error < 8.0, (record[key], float(error))
    settings = json.loads((out / "synthedit.json").read_text())
    assert settings["split"] == "val" and settings["size"] == [32, 32]


def test_synth_command_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["--out", str(out), "--num", "1", "--size", "16", "16", "--frames", "1"]
    assert synth_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--overwrite" in error and str(out) in error
    assert not (out / "manifest.jsonl").exists()
    assert synth_main([*argv, "--overwrite", "--split", "heldout"]) == 0
    (line,) = (out / "manifest.jsonl").read_text().splitlines()
    assert json.loads(line)["id"] == "heldout-0-000000"
    assert (out / "keep.txt").read_text() == "mine"


def test_generation_is_fast() -> None:
    small = SynthEditGenerator(size=(32, 32), frames=9, seed=9)
    start = time.perf_counter()
    for index in range(50):
        small.sample(index)
    assert time.perf_counter() - start < 2.0
    large = SynthEditGenerator(size=(64, 64), frames=17, seed=9)
    start = time.perf_counter()
    for index in range(7):
        large.sample(index)
    assert (time.perf_counter() - start) / 7 < 0.1


def test_synth_refuses_odd_sizes_so_masks_match_videos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "odd"
    argv = ["--out", str(out), "--num", "1", "--size", "33", "31", "--frames", "3"]
    assert synth_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--size 34 32" in error
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # even sizes: every video is exactly its mask's size
    assert synth_main(["--out", str(out), "--num", "2", "--size", "34", "30", "--frames", "3"]) == 0
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        with np.load(out / record["mask"]) as data:
            mask_shape = data["mask"].shape
        for key in ("source", "target"):
            video, _ = read_video(out / record[key])
            assert tuple(video.shape[:3]) == mask_shape == (3, 34, 30)


def test_a_failed_synth_leaves_nothing_that_blocks_the_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamodules.synthedit.writer as writer

    real_write = writer.write_video
    calls = {"n": 0}

    def disk_full(path: Path, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # the second pair's target
            raise OSError(28, "No space left on device")
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(writer, "write_video", disk_full)
    out = tmp_path / "data"
    argv = ["--out", str(out), "--num", "3", "--size", "16", "16", "--frames", "1"]
    assert synth_main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "No space left" in errors[0] and "Traceback" not in errors[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial or staging folder
    monkeypatch.setattr(writer, "write_video", real_write)
    assert synth_main(argv) == 0  # the plain retry works, no --overwrite needed
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not the private staging mode
