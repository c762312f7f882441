"""Corruption functions, task options, the task sampler and the task registry."""

from __future__ import annotations

import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

import tasks.base as base
from tasks import (
    PRETRAIN_MIX,
    CubeInpainting,
    InstructionEditing,
    Reconstruction,
    SpeedPerturbation,
    TaskSampler,
    TubeShuffle,
    available_tasks,
    build_task,
    cube_inpaint,
    select_anchors,
    speed_perturb,
    tube_shuffle,
    tube_unshuffle,
    with_token,
)
from tests.helpers_data import clip_batch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ramp(frames: int, batch: int | None = 2) -> torch.Tensor:
    """A video whose frame ``t`` has value ``t`` everywhere: ``(B, 3, T, 4, 4)``."""
    video = (
        torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(1, 3, -1, 4, 4)
    )
    return video[0].clone() if batch is None else video.expand(batch, -1, -1, -1, -1).clone()


# ----------------------------------------------------------------------------- cube inpainting
@pytest.mark.parametrize(
    "frames,ratio,expected", [(10, 0.3, 3), (9, 0.3, 3), (9, 0.05, 1), (2, 0.9, 1)]
)
def test_cube_inpaint_frames_mode_masks_contiguous_whole_frames(frames, ratio, expected):
    video = torch.rand(4, 3, frames, 6, 5) * 2 - 1
    corrupted, mask = cube_inpaint(video, ratio=ratio, mode="frames", generator=_gen(1), fill=0.5)
    assert mask.shape == (4, 1, frames, 6, 5)
    for sample in mask[:, 0]:
        per_frame = sample.flatten(1)
        whole = per_frame.min(1).values == per_frame.max(1).values
        assert bool(whole.all()), "frames mode must mask whole frames"
        masked = per_frame[:, 0].nonzero().flatten().tolist()
        assert len(masked) == expected
        assert masked == list(range(masked[0], masked[0] + expected)), "not contiguous"
        assert masked[0] >= 1
    assert torch.equal(
        corrupted[mask.expand_as(video) == 1],
        torch.full_like(video, 0.5)[mask.expand_as(video) == 1],
    )
    assert torch.equal(corrupted[mask.expand_as(video) == 0], video[mask.expand_as(video) == 0])


def test_cube_inpaint_never_masks_frame_zero_over_many_seeds():
    video = torch.zeros(8, 3, 9, 2, 2)
    starts = set()
    for seed in range(100):
        _, mask = cube_inpaint(video, ratio=0.3, mode="frames", generator=_gen(seed))
        assert not bool(mask[:, :, 0].any())
        starts.update(mask[:, 0, :, 0, 0].argmax(1).tolist())
    assert starts == set(range(1, 7)), "every legal start (1..T-3) should occur"


@pytest.mark.parametrize("shape", [(9, 32, 32), (17, 16, 24), (1, 32, 32)])
def test_cube_inpaint_cube_mode_is_one_box_of_about_ratio(shape):
    video = torch.rand(6, 3, *shape)
    _, mask = cube_inpaint(video, ratio=0.3, mode="cube", generator=_gen(3))
    for sample in mask[:, 0]:
        fraction = sample.mean().item()
        assert abs(fraction - 0.3) < 0.06, fraction
        idx = sample.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values
        box = sample[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
        assert bool((box == 1).all()) and box.numel() == sample.sum().item(), "not one box"


def test_cube_inpaint_is_deterministic_per_seed_and_varies_across_samples():
    video = torch.rand(8, 3, 9, 16, 16)
    a = cube_inpaint(video, mode="cube", generator=_gen(7))[1]
    b = cube_inpaint(video, mode="cube", generator=_gen(7))[1]
    c = cube_inpaint(video, mode="cube", generator=_gen(8))[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(m.nonzero().min(0).values.tolist()) for m in a}) > 1


def test_cube_inpaint_unbatched_and_errors():
    corrupted, mask = cube_inpaint(torch.rand(3, 9, 8, 8), generator=_gen(0))
    assert corrupted.shape == (3, 9, 8, 8) and mask.shape == (1, 9, 8, 8)
    with pytest.raises(ValueError, match="frame 0"):
        cube_inpaint(torch.rand(1, 3, 1, 8, 8), mode="frames")
    with pytest.raises(ValueError, match="ratio"):
        cube_inpaint(torch.rand(1, 3, 9, 8, 8), ratio=1.0)
    with pytest.raises(ValueError, match="mode"):
        cube_inpaint(torch.rand(1, 3, 9, 8, 8), mode="tube")
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        cube_inpaint(torch.rand(9, 8, 8))


def test_cube_inpainting_task_masked_loss_region_gives_the_block_as_loss_mask():
    batch = clip_batch(3)
    sample = CubeInpainting(loss_region="masked").prepare(batch, _gen(0))
    assert sample.loss_mask is not None
    changed = (sample.source != sample.target).any(1, keepdim=True)
    assert bool((sample.loss_mask[changed] == 1).all())
    assert CubeInpainting().prepare(batch, _gen(0)).loss_mask is None
    with pytest.raises(ValueError, match="loss_region"):
        CubeInpainting(loss_region="outside")


# ----------------------------------------------------------------------------- speed
@pytest.mark.parametrize(
    "frames,factor,expected",
    [
        (9, 2.0, [0, 2, 4, 6, 8]),
        (17, 2.0, [0, 2, 4, 6, 8, 10, 12, 14, 16]),
        (13, 2.0, [0, 2, 4, 6, 8]),  # 7 frames fit, snapped down to 5
        (9, 1.5, [0, 1.5, 3, 4.5, 6]),  # linear interpolation of a linear ramp is exact
        (5, 0.5, [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]),
        (81, 2.0, list(range(0, 81, 2))),
    ],
)
def test_speed_perturb_plays_frame_i_at_time_i_times_factor(frames, factor, expected):
    out = speed_perturb(_ramp(frames), factor)
    assert out.shape == (2, 3, len(expected), 4, 4)
    assert torch.allclose(out[0, 0, :, 0, 0], torch.tensor(expected, dtype=torch.float32))
    assert (out.shape[2] - 1) % 4 == 0


def test_speed_perturb_frame_counts_are_always_4k_plus_1():
    for frames in range(1, 40):
        for factor in (0.5, 1.3, 2.0, 3.0, 4.0):
            count = speed_perturb(_ramp(frames, batch=None), factor).shape[1]
            assert (count - 1) % 4 == 0
            assert (count - 1) * factor <= frames - 1 + 1e-6, "must stay inside the clip"


def test_speed_perturb_explicit_num_frames_and_errors():
    out = speed_perturb(_ramp(17), 2.0, num_frames=5)
    assert out[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6, 8]
    held = speed_perturb(_ramp(9), 2.0, num_frames=9)
    assert held[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6, 8, 8, 8, 8, 8], "past the end holds"
    with pytest.raises(ValueError, match="4k \\+ 1"):
        speed_perturb(_ramp(9), 2.0, num_frames=6)
    with pytest.raises(ValueError, match="factor"):
        speed_perturb(_ramp(9), 0.0)
    with pytest.raises(ValueError, match="factor"):
        SpeedPerturbation(factor=1.0)
    with pytest.raises(ValueError, match="num_frames"):
        SpeedPerturbation(num_frames=4)


def test_speed_perturbation_task_source_is_the_fast_clip_target_the_clip():
    batch = {"video": _ramp(9) / 8, "caption": ["a", ""]}
    sample = SpeedPerturbation().prepare(batch, _gen(0))
    assert torch.equal(sample.target, batch["video"])
    assert torch.allclose(sample.source[0, 0, :, 0, 0] * 8, torch.tensor([0.0, 2, 4, 6, 8]))


# ----------------------------------------------------------------------------- tube shuffle
@pytest.mark.parametrize("grid", [(2, 2, 2), (2, 1, 1), (1, 1, 3)])
def test_tube_shuffle_is_never_the_identity(grid):
    video = torch.rand(4, 3, 9, 8, 9)
    for seed in range(200):
        shuffled, permutation = tube_shuffle(video, grid, generator=_gen(seed))
        identity = torch.arange(permutation.shape[1]).expand_as(permutation)
        assert not bool((permutation == identity).all(1).any())
        assert not any(torch.equal(s, v) for s, v in zip(shuffled, video, strict=True))


@pytest.mark.parametrize(
    "shape,grid",
    [
        ((8, 8, 8), (2, 2, 2)),
        ((9, 32, 32), (2, 2, 2)),
        ((9, 31, 30), (2, 3, 4)),
        ((5, 7, 11), (3, 2, 2)),
    ],
)
def test_tube_unshuffle_restores_exactly(shape, grid):
    video = torch.randn(3, 2, *shape)
    shuffled, permutation = tube_shuffle(video, grid, generator=_gen(0))
    assert torch.equal(tube_unshuffle(shuffled, permutation, grid), video)
    single, perm = tube_shuffle(video[0], grid, generator=_gen(1))
    assert perm.shape == (grid[0] * grid[1] * grid[2],)
    assert torch.equal(tube_unshuffle(single, perm, grid), video[0])


def test_tube_shuffle_moves_tubes_and_keeps_the_remainder_in_place():
    # 9 frames, 2 temporal tubes: frame 0 stays, tubes are frames 1-4 and 5-8;
    # width 5 in 2 tubes: columns 0-1 and 2-3, column 4 stays.
    t, h, w = 9, 4, 5
    coords = torch.stack(
        torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    )
    video = coords.float().unsqueeze(0)  # (1, 3, T, H, W): each pixel holds its (t, h, w)
    shuffled, permutation = tube_shuffle(video, (2, 2, 2), generator=_gen(5))
    assert torch.equal(shuffled[:, :, 0], video[:, :, 0])
    assert torch.equal(shuffled[..., 4], video[..., 4])
    starts = [(1 + 4 * a, 2 * b, 2 * c) for a in range(2) for b in range(2) for c in range(2)]
    for slot, source in enumerate(permutation[0].tolist()):
        (t0, h0, w0), (s0, s1, s2) = starts[slot], starts[source]
        got = shuffled[0, :, t0 : t0 + 4, h0 : h0 + 2, w0 : w0 + 2]
        assert torch.equal(got, video[0, :, s0 : s0 + 4, s1 : s1 + 2, s2 : s2 + 2])


def test_tube_shuffle_errors():
    with pytest.raises(ValueError, match="one tube"):
        tube_shuffle(torch.rand(1, 3, 9, 8, 8), (1, 1, 1))
    with pytest.raises(ValueError, match="smaller than the grid"):
        tube_shuffle(torch.rand(1, 3, 1, 8, 8), (2, 2, 2))
    with pytest.raises(ValueError, match="permutation"):
        tube_unshuffle(torch.rand(2, 3, 9, 8, 8), torch.arange(8), (2, 2, 2))
    with pytest.raises(ValueError, match="grid"):
        TubeShuffle(grid=(1, 1, 1))


# ----------------------------------------------------------------------------- task options
def test_anchor_selection_first_frame_or_evenly_spaced():
    target = _ramp(9)
    assert select_anchors(target, 1)[:, :, 0, 0, 0].tolist() == [[0.0], [0.0]]
    assert select_anchors(target, 3)[0, :, 0, 0, 0].tolist() == [0.0, 4.0, 8.0]
    image = torch.rand(2, 3, 1, 4, 4)
    anchors = select_anchors(image, 2)
    assert anchors.shape == (2, 2, 3, 4, 4)
    assert torch.equal(anchors[:, 1], image[:, :, 0])
    with pytest.raises(ValueError, match=">= 1"):
        select_anchors(target, 0)


def test_with_token_and_reconstruction_modes():
    assert with_token("[T]", ["a cat ", "", "  "]) == ["[T] a cat", "[T]", "[T]"]
    assert with_token("", ["a cat"]) == ["a cat"]
    batch = clip_batch(2)
    generation = Reconstruction().prepare(batch, _gen(0))
    assert generation.source is None
    assert generation.instructions == [c.strip() for c in batch["caption"]]
    identity = Reconstruction(mode="identity").prepare(batch, _gen(0))
    assert torch.equal(identity.source, identity.target)
    with pytest.raises(ValueError, match="mode"):
        Reconstruction(mode="copy")


def test_task_weights_streams_and_wrong_stream_errors():
    assert CubeInpainting().weight == 2.0 and CubeInpainting(weight=0.5).weight == 0.5
    assert InstructionEditing(stream="image_pairs").stream == "image_pairs"
    assert InstructionEditing().stream == "video_pairs"
    with pytest.raises(ValueError, match="stream"):
        InstructionEditing(stream="clips")
    with pytest.raises(ValueError, match="weight"):
        TubeShuffle(weight=-1)
    with pytest.raises(KeyError, match="right stream"):
        TubeShuffle().prepare({"source": torch.rand(1, 3, 9, 8, 8)}, _gen(0))


def test_pretrain_mix_matches_the_default_weights():
    registry = available_tasks()
    assert {name: registry[name].cls.default_weight for name in PRETRAIN_MIX} == PRETRAIN_MIX


# ----------------------------------------------------------------------------- sampler
def _pretrain_sampler(seed: int = 0) -> TaskSampler:
    return TaskSampler(PRETRAIN_MIX, dict.fromkeys(PRETRAIN_MIX, "clips"), seed=seed)


def test_sampler_ratios_follow_the_1_2_3_4_mix():
    counts = Counter(_pretrain_sampler().sequence(0, 10_000))
    for name, weight in PRETRAIN_MIX.items():
        assert abs(counts[name] / 10_000 - weight / 10) < 0.02, (name, counts)


def test_sampler_is_deterministic_and_resumes_the_same_sequence():
    full = _pretrain_sampler(3).sequence(0, 400)
    assert _pretrain_sampler(3).sequence(0, 400) == full
    assert _pretrain_sampler(3).sequence(250, 150) == full[250:]
    assert [_pretrain_sampler(3).task_at(i) for i in (7, 123, 399)] == [
        full[7],
        full[123],
        full[399],
    ]
    assert _pretrain_sampler(4).sequence(0, 400) != full


def test_sampler_skips_zero_weights_and_reports_streams():
    sampler = TaskSampler(
        {"a": 0.0, "b": 1.0, "c": 0.0}, {"a": "clips", "b": "image_pairs", "c": "video_pairs"}
    )
    assert set(sampler.sequence(0, 500)) == {"b"}
    assert sampler.active_streams() == {"image_pairs"}
    assert sampler.stream_at(10) == "image_pairs"
    with pytest.raises(ValueError, match="no stream"):
        TaskSampler({"a": 1.0}, {})
    with pytest.raises(ValueError, match="all task weights are zero"):
        TaskSampler({"a": 0.0}, {"a": "clips"})


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_builtin_with_its_origin():
    registry = available_tasks()
    builtins = {
        "reconstruction",
        "cube_inpainting",
        "speed_perturbation",
        "tube_shuffle",
        "semantic_anchoring",
        "instruction_editing",
    }
    assert builtins <= set(registry)
    assert all(registry[name].origin == "built-in" for name in builtins)
    assert registry["tube_shuffle"].cls is TubeShuffle


def test_build_task_by_name_and_class_path():
    task = build_task("cube_inpainting", weight=5.0, mode="cube")
    assert isinstance(task, CubeInpainting) and task.weight == 5.0 and task.mode == "cube"
    assert isinstance(build_task("tasks.tube_shuffle.TubeShuffle"), TubeShuffle)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        build_task("nope")
    with pytest.raises(TypeError, match="not a tasks.base.Task"):
        build_task("collections.OrderedDict")
    with pytest.raises(ImportError, match="cannot import"):
        build_task("no_such_module.Task")


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch):
    """Restore the global registry after a test that installs fake plugins."""
    available_tasks()
    monkeypatch.setattr(base, "_REGISTERED", dict(base._REGISTERED))
    monkeypatch.setattr(base, "_plugins_loaded", False)
    yield


def _fake_distribution(root: Path, dist: str, module: str, body: str, entry: str) -> None:
    """A package ``module`` plus ``<dist>-0.1.dist-info`` with a ``sama.tasks`` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sama.tasks]\n{entry}\n")


_PLUGIN = """
    from tasks.base import Task, with_token

    class Mirror(Task):
        name = "{name}"
        stream = "clips"
        description = "mirror the clip left-right"
        instruction_token = "[Mirror.]"

        def prepare(self, batch, generator):
            video = batch["video"]
            return self_sample(self, video.flip(-1), video, batch)

    def self_sample(task, source, target, batch):
        from tasks.base import EditSample
        return EditSample(source, target, with_token(task.instruction_token, batch["caption"]),
                          task.anchors(target))
"""


def test_entry_point_plugins_are_listed_with_their_distribution(
    tmp_path, monkeypatch, isolated_registry
):
    _fake_distribution(
        tmp_path,
        "sama-mirror",
        "sama_mirror",
        _PLUGIN.format(name="mirror"),
        "mirror = sama_mirror:Mirror",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = available_tasks(refresh=True)
    assert registry["mirror"].origin == "sama-mirror"
    task = build_task("mirror", weight=2.0)
    sample = task.prepare(clip_batch(2), _gen(0))
    assert torch.equal(sample.source, sample.target.flip(-1))
    sys.modules.pop("sama_mirror", None)


def test_duplicate_task_names_name_both_origins(tmp_path, monkeypatch, isolated_registry):
    _fake_distribution(
        tmp_path,
        "sama-clash",
        "sama_clash",
        _PLUGIN.format(name="tube_shuffle"),
        "x = sama_clash:Mirror",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ValueError, match=r"'tube_shuffle' is defined twice: by built-in .* by sama-clash"
    ):
        available_tasks(refresh=True)
    sys.modules.pop("sama_clash", None)


def test_broken_plugin_names_its_distribution(tmp_path, monkeypatch, isolated_registry):
    _fake_distribution(
        tmp_path, "sama-broken", "sama_broken", "raise RuntimeError('boom')\n", "b = sama_broken:X"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="sama-broken.*boom"):
        available_tasks(refresh=True)
    sys.modules.pop("sama_broken", None)


def test_edit_prefix_matches_the_inference_pipeline():
    from sama.pipeline import NEGATIVE_PROMPT, PROMPT_PREFIX
    from tasks import EDIT_PREFIX, InstructionEditing, SemanticAnchoring

    assert EDIT_PREFIX == PROMPT_PREFIX
    assert (
        InstructionEditing.instruction_token
        == SemanticAnchoring.instruction_token
        == NEGATIVE_PROMPT
    )


def test_instruction_editing_edit_region_weight_builds_a_weighted_loss_mask():
    from tasks import InstructionEditing

    source, target = torch.rand(2, 3, 5, 8, 8), torch.rand(2, 3, 5, 8, 8)
    mask = torch.zeros(2, 1, 5, 8, 8)
    mask[:, :, :, 2:4, 2:4] = 1
    batch = {"source": source, "target": target, "instruction": ["a", "b"], "mask": mask}
    gen = torch.Generator().manual_seed(0)
    assert InstructionEditing().prepare(batch, gen).loss_mask is None
    sample = InstructionEditing(edit_region_weight=4).prepare(batch, gen)
    assert sample.loss_mask.shape == (2, 1, 5, 8, 8)
    assert sample.loss_mask[0, 0, 0, 2, 2] == 4 and sample.loss_mask[0, 0, 0, 0, 0] == 1
    no_mask = {k: v for k, v in batch.items() if k != "mask"}
    assert InstructionEditing(edit_region_weight=4).prepare(no_mask, gen).loss_mask is None
    with pytest.raises(ValueError, match="edit_region_weight"):
        InstructionEditing(edit_region_weight=0)


def test_a_new_builtin_task_is_one_file_and_registers_itself(
    tmp_path, monkeypatch, isolated_registry
):
    import tasks

    (tmp_path / "mirror_builtin.py").write_text(
        textwrap.dedent(
            """
            from tasks.base import ClipCorruptionTask, register_task

            @register_task
            class MirrorBuiltin(ClipCorruptionTask):
                name = "mirror_builtin"
                instruction_token = "[Unmirror.]"
                description = "restore a left-right mirrored clip"
                deterministic = True

                def corrupt(self, video, generator):
                    return video.flip(-1), None
            """
        )
    )
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    try:
        info = available_tasks()["mirror_builtin"]
        assert info.origin == "built-in" and info.cls.__module__ == "tasks.mirror_builtin"
        batch = clip_batch(2)
        sample = build_task("mirror_builtin").prepare(batch, _gen(0))
        assert torch.equal(sample.source, batch["video"].flip(-1))
        assert torch.equal(sample.target, batch["video"]) and sample.source_reusable
        assert sample.instructions == with_token("[Unmirror.]", batch["caption"])
        assert torch.equal(sample.anchors[:, 0], batch["video"][:, :, 0])
    finally:
        sys.modules.pop("tasks.mirror_builtin", None)


def test_clip_corruption_task_assembles_the_sample_and_refuses_other_streams():
    from tasks import ClipCorruptionTask

    class Blank(ClipCorruptionTask):
        name = "blank"
        instruction_token = "[Fill in.]"
        description = "fill a blanked clip"

        def corrupt(self, video, generator):
            noise = torch.rand(video.shape[0], generator=generator)
            return video * 0 + noise.view(-1, 1, 1, 1, 1), torch.ones_like(video[:, :1])

    batch = clip_batch(2, frames=9)
    task = Blank(weight=0.5)
    task.anchor_frames = 2
    sample = task.prepare(batch, _gen(0))
    assert sample.loss_mask.shape == (2, 1, 9, 32, 32) and not sample.source_reusable
    assert sample.anchors.shape == (2, 2, 3, 32, 32) and not sample.is_image
    assert torch.equal(sample.anchors[:, 1], batch["video"][:, :, 8])
    with pytest.raises(KeyError, match="right stream"):
        task.prepare({"source": batch["video"]}, _gen(0))
    with pytest.raises(TypeError, match="'clips' stream"):

        class Pairs(ClipCorruptionTask):
            name = "pairs"
            stream = "video_pairs"
