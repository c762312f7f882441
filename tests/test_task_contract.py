"""The contract every registered task (built-in or plugin) must keep; see tasks/base.py.

Besides the registry, the contract runs over the reverse-playback example of docs/tasks.md,
read from the page and imported as ``my_tasks.reverse`` (as the page says a user would), so
the documented code and the contract cannot drift apart.
"""

from __future__ import annotations

import copy
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tasks import available_tasks
from tasks.base import STREAMS, EditSample, Task
from tests.helpers_data import clip_batch, pair_batch

REGISTRY = available_tasks()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"
DOCUMENTED = "docs/tasks.md:my_tasks.reverse"

TOKENS = {
    "cube_inpainting": "[Complete the missing regions in the video.]",
    "speed_perturbation": "[Restore the video to normal playback speed.]",
    "tube_shuffle": "[Restore the correct spatio-temporal order of the video segments.]",
}


def documented_plugin_code() -> str:
    """The ``my_tasks/reverse.py`` code block of docs/tasks.md, without its path comment."""
    found = re.search(r"```python\n# my_tasks/reverse\.py\n(.*?)```", DOCS.read_text(), re.S)
    assert found, f"{DOCS}: no ```python block starting with '# my_tasks/reverse.py'"
    return found.group(1)


@pytest.fixture(scope="module")
def documented_task_class(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[Task]]:
    """The documented ``ReversePlayback``, written to ``my_tasks/reverse.py`` and imported."""
    root = tmp_path_factory.mktemp("docs_plugin")
    (root / "my_tasks").mkdir()
    (root / "my_tasks" / "__init__.py").write_text("")
    (root / "my_tasks" / "reverse.py").write_text(documented_plugin_code())
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("my_tasks.reverse").ReversePlayback
    finally:
        sys.path.remove(str(root))
        for name in ("my_tasks.reverse", "my_tasks"):
            sys.modules.pop(name, None)


def _batch(task: Task, batch: int = 3) -> dict:
    if task.stream == "clips":
        return clip_batch(batch, frames=9, size=(16, 24))
    return pair_batch(batch, frames=1 if task.stream == "image_pairs" else 9, size=(16, 24))


def _prepare(task: Task, batch: dict, seed: int) -> EditSample:
    return task.prepare(batch, torch.Generator().manual_seed(seed))


@pytest.fixture(params=[*sorted(REGISTRY), DOCUMENTED], ids=str)
def task(request: pytest.FixtureRequest) -> Task:
    if request.param == DOCUMENTED:
        return request.getfixturevalue("documented_task_class")()
    return REGISTRY[request.param].cls()


def test_class_attributes(task):
    cls = type(task)
    if cls.__module__ == "my_tasks.reverse":
        assert cls.name not in REGISTRY or REGISTRY[cls.name].cls is not cls, "never registered"
    else:
        assert cls.name and REGISTRY[cls.name].cls is cls
        assert REGISTRY[cls.name].origin
    assert cls.name
    assert task.stream in STREAMS
    assert task.weight == cls.default_weight >= 0
    assert cls.description and "\n" not in cls.description
    assert isinstance(cls.deterministic, bool) and isinstance(cls.corrupts_source, bool)


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
    if not type(task).deterministic:
        other = _prepare(task, batch, 1)
        assert not torch.equal(other.source, sample.source), "random corruption ignores the seed"


def test_the_deterministic_flag_says_whether_the_generator_matters(task):
    batch = _batch(task)
    first, other = _prepare(task, batch, 0), _prepare(task, batch, 1)
    same = {
        field: (a is None and b is None)
        or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
        for field in ("source", "target", "anchors", "loss_mask")
        for a, b in [(getattr(first, field), getattr(other, field))]
    }
    if type(task).deterministic:
        assert all(same.values()), f"deterministic = True, but seeds differ in {same}"
        assert first.instructions == other.instructions
    else:
        assert not all(same.values()), "deterministic = False, but the seed changes nothing"


def test_source_is_reusable_unless_drawn_afresh_each_step(task):
    sample = _prepare(task, _batch(task), 0)
    cls = type(task)
    if sample.source is not None and cls.corrupts_source and not cls.deterministic:
        assert not sample.source_reusable, "a random corruption must never enter the cache"


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
