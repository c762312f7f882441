"""SamaDataModule: task-driven stream reads, determinism, resume, sharding, workers, broken files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from callbacks.broken_files import BrokenFileReport
from datamodules.clips import VideoClips
from datamodules.streams import SamaDataModule, collate_items
from sama.io import write_video
from tasks.sampler import TaskSampler


class CountingItems(Dataset):
    """``size`` items whose tensors hold ``base + index``; counts reads."""

    def __init__(self, size: int, base: int, paired: bool = False, frames: int = 1) -> None:
        self.size, self.base, self.paired, self.frames = size, base, paired, frames
        self.reads = 0

    def __len__(self) -> int:
        return self.size

    def item_path(self, index: int) -> str:
        return f"item-{self.base + index}"

    def __getitem__(self, index: int) -> dict:
        self.reads += 1
        value = torch.full((3, self.frames, 2, 2), float(self.base + index))
        if self.paired:
            return {
                "source": value,
                "target": -value,
                "instruction": "edit",
                "id": str(index),
                "category": "",
            }
        return {"video": value, "caption": f"c{index}", "path": self.item_path(index)}


def _ids(batch: dict) -> list[int]:
    key = "video" if batch["stream"] == "clips" else "source"
    return [int(v) for v in batch[key][:, 0, 0, 0, 0]]


def _sampler(seed: int = 3) -> TaskSampler:
    return TaskSampler(
        {"recon": 2.0, "edit": 1.0, "image_edit": 1.0},
        {"recon": "clips", "edit": "video_pairs", "image_edit": "image_pairs"},
        seed=seed,
    )


def _module(seed: int = 0, **kwargs) -> tuple[SamaDataModule, dict[str, CountingItems]]:
    data = {
        "clips": CountingItems(23, 0),
        "video_pairs": CountingItems(17, 1000, paired=True, frames=5),
        "image_pairs": CountingItems(11, 2000, paired=True),
    }
    dm = SamaDataModule(
        clips=[data["clips"]],
        video_pairs=[data["video_pairs"]],
        image_pairs=[data["image_pairs"]],
        batch_size=2,
        image_batch_size=3,
        seed=seed,
        **kwargs,
    )
    dm.set_task_sampler(_sampler())
    return dm, data


def _take(loader, count: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


def test_reads_only_the_stream_the_task_picks() -> None:
    dm, data = _module()
    batches = _take(dm.train_dataloader(), 30)
    sampler = _sampler()
    streams = [b["stream"] for b in batches]
    assert [b["task"] for b in batches] == sampler.sequence(0, 30)
    assert [b["index"] for b in batches] == list(range(30))
    assert set(streams) == {"clips", "video_pairs", "image_pairs"}
    for name, dataset in data.items():
        size = 3 if name == "image_pairs" else 2
        assert dataset.reads == size * streams.count(name)
    for batch in batches:
        ids = _ids(batch)
        expected = {
            "clips": range(0, 23),
            "video_pairs": range(1000, 1017),
            "image_pairs": range(2000, 2011),
        }[batch["stream"]]
        assert all(i in expected for i in ids)
    pair = next(b for b in batches if b["stream"] == "image_pairs")
    assert pair["source"].shape == (3, 3, 1, 2, 2) and pair["instruction"] == ["edit"] * 3


def test_same_seed_same_batches_other_seed_differs() -> None:
    first = [_ids(b) for b in _take(_module(seed=5)[0].train_dataloader(), 20)]
    again = [_ids(b) for b in _take(_module(seed=5)[0].train_dataloader(), 20)]
    other = [_ids(b) for b in _take(_module(seed=6)[0].train_dataloader(), 20)]
    assert first == again
    assert first != other


def test_a_pass_covers_every_sample_once() -> None:
    dm, _ = _module()
    clips = [b for b in _take(dm.train_dataloader(), 80) if b["stream"] == "clips"]
    seen = [i for b in clips for i in _ids(b)]
    assert len(seen) >= 23
    assert sorted(seen[:23]) == list(range(23))


def test_resume_gives_the_tail_of_an_uninterrupted_run() -> None:
    full = _take(_module()[0].train_dataloader(), 25)
    dm, _ = _module()
    _take(dm.train_dataloader(), 9)
    state = dm.state_dict()
    assert state["next_index"] == 9
    resumed, _ = _module()
    resumed.load_state_dict(state)
    tail = _take(resumed.train_dataloader(), 16)
    assert [b["index"] for b in tail] == list(range(9, 25))
    assert [_ids(b) for b in tail] == [_ids(b) for b in full[9:]]
    assert [b["task"] for b in tail] == [b["task"] for b in full[9:]]


def test_ddp_ranks_agree_on_tasks_and_read_disjoint_samples() -> None:
    ranks = []
    for rank in (0, 1):
        dm, _ = _module()
        dm.set_shard(rank, 2)
        ranks.append(_take(dm.train_dataloader(), 12))
    assert [b["task"] for b in ranks[0]] == [b["task"] for b in ranks[1]]
    for stream, size in (("clips", 23), ("video_pairs", 17)):
        per_rank = [[i for b in run if b["stream"] == stream for i in _ids(b)] for run in ranks]
        first_pass = size // 2
        assert set(per_rank[0][:first_pass]).isdisjoint(per_rank[1][:first_pass])


def test_missing_stream_is_named_with_its_task() -> None:
    dm = SamaDataModule(clips=[CountingItems(4, 0)], batch_size=2)
    dm.set_task_sampler(_sampler())
    with pytest.raises(ValueError, match=r"task 'edit' reads the 'video_pairs' stream"):
        dm.train_dataloader()
    zero = TaskSampler({"recon": 1.0, "edit": 0.0}, {"recon": "clips", "edit": "video_pairs"})
    dm.set_task_sampler(zero)
    assert {b["task"] for b in _take(dm.train_dataloader(), 5)} == {"recon"}


def test_no_sampler_is_a_clear_error() -> None:
    dm = SamaDataModule(clips=[CountingItems(4, 0)])
    with pytest.raises(RuntimeError, match="set_task_sampler"):
        dm.train_dataloader()


def test_validation_batches_are_fixed_per_task() -> None:
    dm, _ = _module(val_batches_per_task=2)
    first = list(dm.val_dataloader())
    again = list(dm.val_dataloader())
    assert [b["task"] for b in first] == [
        "recon",
        "recon",
        "edit",
        "edit",
        "image_edit",
        "image_edit",
    ]
    assert [_ids(b) for b in first] == [_ids(b) for b in again]
    assert len(dm.val_dataloader()) == 6


def test_collate_drops_keys_not_all_items_have() -> None:
    items = [{"x": torch.zeros(2), "mask": torch.ones(1), "s": "a"}, {"x": torch.ones(2), "s": "b"}]
    batch = collate_items(items)
    assert set(batch) == {"x", "s"} and batch["x"].shape == (2, 2) and batch["s"] == ["a", "b"]


class Bucketed(CountingItems):
    def bucket_of(self, index: int) -> tuple[int, int]:
        return (2, 2) if index % 3 else (2, 4)

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        width = self.bucket_of(index)[1]
        item["video"] = item["video"][..., :1].expand(-1, -1, -1, width).contiguous()
        return item


def test_buckets_never_mix_in_a_batch() -> None:
    dm = SamaDataModule(clips=[Bucketed(30, 0)], batch_size=3)
    dm.set_task_sampler(TaskSampler({"recon": 1.0}, {"recon": "clips"}))
    widths = {b["video"].shape[-1] for b in _take(dm.train_dataloader(), 15)}
    assert widths == {2, 4}


@pytest.fixture()
def clip_folder(tmp_path: Path) -> tuple[Path, list[Path]]:
    rng = np.random.default_rng(0)
    for i in range(6):
        frames = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
        write_video(tmp_path / f"good{i}.mp4", frames, fps=10)
    broken = [tmp_path / "garbage.mp4", tmp_path / "empty.mp4"]
    broken[0].write_bytes(b"\x00\x01not a video" * 50)
    broken[1].write_bytes(b"")
    return tmp_path, broken


def test_broken_files_are_skipped_and_reported(clip_folder, tmp_path: Path) -> None:
    folder, broken = clip_folder
    clips = VideoClips([str(folder)], frames=5, size=(8, 8), clips_per_video=1)
    dm = SamaDataModule(clips=[clips], batch_size=2, max_broken_fraction=0.5)
    dm.set_task_sampler(TaskSampler({"recon": 1.0}, {"recon": "clips"}))
    batches = _take(dm.train_dataloader(), 10)
    assert all(b["video"].shape == (2, 3, 5, 8, 8) for b in batches)
    assert all("good" in p for b in batches for p in b["path"])
    skipped = {path for b in batches for path, _ in b["skipped"]}
    assert skipped == {str(p) for p in broken}

    class FakeTrainer:
        is_global_zero = True
        log_dir = str(tmp_path / "logs")
        default_root_dir = str(tmp_path)

    report = BrokenFileReport()
    for batch in batches:
        report.on_train_batch_end(FakeTrainer(), None, None, batch, 0)
    written = report.report(FakeTrainer())
    lines = written.read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(str(p) for p in broken)
    assert report.report(FakeTrainer()) is None  # nothing new


def test_too_many_broken_files_is_a_clear_error(tmp_path: Path) -> None:
    write_video(tmp_path / "good.mp4", np.zeros((5, 16, 16, 3), np.uint8), fps=10)
    for i in range(5):
        (tmp_path / f"bad{i}.mp4").write_bytes(b"junk" * 10)
    clips = VideoClips([str(tmp_path)], frames=5, size=(8, 8), clips_per_video=1)
    dm = SamaDataModule(clips=[clips], batch_size=2, max_broken_fraction=0.1)
    dm.set_task_sampler(TaskSampler({"recon": 1.0}, {"recon": "clips"}))
    with pytest.raises(RuntimeError, match="max_broken_fraction"):
        _take(dm.train_dataloader(), 20)


def test_two_workers_keep_the_order() -> None:
    start = time.perf_counter()
    single = _take(_module()[0].train_dataloader(), 12)
    workers = _take(_module(num_workers=2)[0].train_dataloader(), 12)
    assert [b["index"] for b in workers] == list(range(12))
    assert [_ids(b) for b in workers] == [_ids(b) for b in single]
    assert time.perf_counter() - start < 30
