"""The contract every registered task (built-in or plugin) must keep; see tasks/base.py."""

from __future__ import annotations

import copy

import pytest
import torch

from tasks import available_tasks
from tasks.base import STREAMS, EditSample, Task
from tests.helpers_data import clip_batch, pair_batch

REGISTRY = available_tasks()

TOKENS = {
    "cube_inpainting": "[Complete the missing regions in the video.]",
    "speed_perturbation": "[Restore the video to normal playback speed.]",
    "tube_shuffle": "[Restore the correct spatio-temporal order of the video segments.]",
}


def _batch(task: Task, batch: int = 3) -> dict:
    if task.stream == "clips":
        return clip_batch(batch, frames=9, size=(16, 24))
    return pair_batch(batch, frames=1 if task.stream == "image_pairs" else 9, size=(16, 24))


def _prepare(task: Task, batch: dict, seed: int) -> EditSample:
    return task.prepare(batch, torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(REGISTRY), ids=str)
def task(request) -> Task:
    return REGISTRY[request.param].cls()


def test_class_attributes(task):
    cls = type(task)
    assert cls.name and REGISTRY[cls.name].cls is cls
    assert task.stream in STREAMS
    assert task.weight == cls.default_weight >= 0
    assert cls.description and "\n" not in cls.description
    assert REGISTRY[cls.name].origin


def test_prepare_returns_an_edit_sample_with_the_contract_layouts(task):
    batch = _batch(task)
    before = copy.deepcopy(batch)
    sample = _prepare(task, batch, 0)
    target_key = "video" if task.stream == "clips" else "target"
    assert isinstance(sample, EditSample)
    assert sample.target.shape == batch[target_key].shape
    b, c, t, h, w = sample.target.shape
    assert c == 3 and sample.target.dtype == torch.float32
    if sample.source is not None:
        assert sample.source.shape[:2] == (b, 3) and sample.source.shape[3:] == (h, w)
        assert (sample.source.shape[2] - 1) % 4 == 0, "source frame counts stay 4k+1"
        assert float(sample.source.abs().max()) <= 1.0
    assert sample.anchors.shape == (b, 1, 3, h, w)
    assert torch.equal(sample.anchors[:, 0], sample.target[:, :, 0]), "anchor = first target frame"
    assert sample.is_image == (t == 1)
    if sample.loss_mask is not None:
        assert sample.loss_mask.shape == (b, 1, t, h, w)
        assert 0 <= float(sample.loss_mask.min()) and float(sample.loss_mask.max()) <= 1
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(batch[key], value), f"prepare modified batch[{key!r}] in place"


def test_instructions_carry_the_task_token(task):
    batch = _batch(task)
    sample = _prepare(task, batch, 0)
    assert len(sample.instructions) == len(sample.target)
    assert all(isinstance(text, str) for text in sample.instructions)
    token = type(task).instruction_token
    if task.name in TOKENS:
        assert token == TOKENS[task.name]
    for text, original in zip(
        sample.instructions, batch.get("caption", batch.get("instruction")), strict=True
    ):
        assert text.startswith(token)
        assert original.strip() in text


def test_same_generator_seed_gives_the_same_sample(task):
    batch = _batch(task)
    first, again = _prepare(task, batch, 11), _prepare(task, batch, 11)
    for field in ("source", "target", "anchors", "loss_mask"):
        a, b = getattr(first, field), getattr(again, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    assert first.instructions == again.instructions


def test_source_is_corrupted_exactly_when_the_task_says_so(task):
    batch = _batch(task, batch=4)
    sample = _prepare(task, batch, 0)
    if not type(task).corrupts_source:
        # no pretext: no source, the clip itself, or the pair's own source
        expected = batch.get("source", sample.target)
        assert sample.source is None or torch.equal(sample.source, expected)
        return
    for source, target in zip(sample.source, sample.target, strict=True):
        assert source.shape != target.shape or not torch.equal(source, target)
    if task.name != "speed_perturbation":  # the speed-up itself is deterministic
        other = _prepare(task, batch, 1)
        assert not torch.equal(other.source, sample.source)


def test_anchor_frames_setting_is_honoured(task):
    task.anchor_frames = 3
    sample = _prepare(task, _batch(task, batch=2), 0)
    b, _, t, h, w = sample.target.shape
    assert sample.anchors.shape == (b, 3, 3, h, w)
    assert torch.equal(sample.anchors[:, -1], sample.target[:, :, t - 1])


def test_task_is_configurable_from_yaml(task):
    from jsonargparse import ArgumentParser

    cls = type(task)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--tasks", type=list[Task])
    spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {"weight": 0.5}}
    built = parser.instantiate(parser.parse_object({"tasks": [spec]})).tasks
    assert type(built[0]) is cls and built[0].weight == 0.5
