"""SamaDataModule: the named data streams and the task-driven, deterministic batch schedule.

Three streams: ``clips`` (unpaired videos), ``video_pairs`` and ``image_pairs`` (edits). The
:class:`~tasks.sampler.TaskSampler` decides which task owns micro-batch ``i``; the training
loader reads that batch from the task's stream only. Which samples form a batch is a pure
function of ``(seed, stream, n, rank, world_size)``, where ``n`` counts the earlier
micro-batches that read the same stream, so runs are reproducible, DDP ranks read disjoint
samples, dataloader workers keep the order and a resumed run continues the same sequence.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from datamodules.manifests import stable_seed
from sama.io import VideoReadError

if TYPE_CHECKING:
    from tasks.sampler import TaskSampler

__all__ = ["READ_ERRORS", "STREAMS", "SamaDataModule", "collate_items"]

logger = logging.getLogger(__name__)

STREAMS: tuple[str, ...] = ("clips", "video_pairs", "image_pairs")

#: Exceptions a sample read may raise that mark the file broken (skipped, not fatal).
READ_ERRORS: tuple[type[BaseException], ...] = (VideoReadError, OSError, ValueError)

# The broken-file fraction is only judged once this many reads were attempted.
_MIN_ATTEMPTS = 20


def collate_items(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of item dicts into a batch dict.

    Tensors are stacked along a new batch dimension, anything else becomes a list. A key that
    not every item has (``mask`` of a manifest with masks on some lines only) is dropped.
    """
    if not items:
        raise ValueError("collate_items: no items to collate")
    keys = [key for key in items[0] if all(key in item for item in items)]
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"collate_items: items disagree on the shape of {key!r} ({sorted(shapes)}); "
                    "give every dataset of a stream the same frames and size, or use buckets"
                )
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


class _Stream:
    """One named stream: its datasets end to end, the batch size and the bucket partition.

    Datasets may define ``item_path(i) -> str`` (named in broken-file reports) and
    ``bucket_of(i)`` (items of different buckets never share a batch).
    """

    def __init__(self, name: str, datasets: Sequence[Dataset], batch_size: int) -> None:
        self.name = name
        self.datasets = list(datasets)
        self.batch_size = batch_size
        self.offsets = [0]
        for dataset in self.datasets:
            self.offsets.append(self.offsets[-1] + len(dataset))
        self._buckets: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[Dataset, int]:
        """The dataset holding stream item ``index`` and the index inside it."""
        which = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[which], index - self.offsets[which]

    def path_of(self, index: int) -> str:
        dataset, local = self.locate(index)
        item_path = getattr(dataset, "item_path", None)
        return item_path(local) if item_path else f"{type(dataset).__name__}[{local}]"

    def buckets(self) -> list[np.ndarray]:
        """Stream indices grouped by bucket, groups in a fixed order (computed once)."""
        if self._buckets is None:
            groups: dict[str, list[int]] = {}
            for dataset, offset in zip(self.datasets, self.offsets, strict=False):
                bucket_of = getattr(dataset, "bucket_of", None)
                for local in range(len(dataset)):
                    key = repr(bucket_of(local)) if bucket_of else ""
                    groups.setdefault(key, []).append(offset + local)
            self._buckets = [np.asarray(groups[key], dtype=np.int64) for key in sorted(groups)]
        return self._buckets


class _BatchReader:
    """Reads the ``n``-th batch of a stream for one rank, skipping broken samples.

    Owns the broken-file accounting of the process it runs in (one per dataloader worker).
    """

    def __init__(
        self,
        streams: dict[str, _Stream],
        *,
        seed: int,
        salt: str,
        rank: int,
        world_size: int,
        max_broken_fraction: float,
    ) -> None:
        self.streams = streams
        self.seed = seed
        self.salt = salt
        self.rank = rank
        self.world_size = world_size
        self.max_broken_fraction = max_broken_fraction
        self.attempts = 0
        self.failures = 0
        self.broken: dict[str, dict[int, tuple[str, str]]] = {name: {} for name in streams}
        self._permutations: dict[tuple[str, int, int], np.ndarray] = {}

    def bucket_choice(self, stream: str, n: int) -> int:
        """Bucket of the stream's ``n``-th batch: drawn in proportion to bucket sizes."""
        buckets = self.streams[stream].buckets()
        if len(buckets) == 1:
            return 0
        sizes = np.cumsum([len(b) for b in buckets])
        draw = stable_seed(self.seed, self.salt, stream, "bucket", n) % int(sizes[-1])
        return int(np.searchsorted(sizes, draw, side="right"))

    def _permutation(self, stream: str, bucket: int, epoch: int) -> np.ndarray:
        key = (stream, bucket, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 16:
                self._permutations.clear()
            members = self.streams[stream].buckets()[bucket]
            rng = np.random.default_rng(stable_seed(self.seed, self.salt, stream, bucket, epoch))
            self._permutations[key] = members[rng.permutation(len(members))]
        return self._permutations[key]

    def _candidate(self, stream: str, bucket: int, slot: int, attempt: int) -> int:
        """Stream index for ``slot``: its place in a seeded pass, or a seeded stand-in."""
        members = self.streams[stream].buckets()[bucket]
        if attempt == 0:
            epoch, position = divmod(slot, len(members))
            return int(self._permutation(stream, bucket, epoch)[position])
        draw = stable_seed(self.seed, self.salt, stream, bucket, slot, attempt)
        return int(members[draw % len(members)])

    def read_batch(
        self, stream: str, bucket: int, m: int
    ) -> tuple[dict[str, Any], list[list[str]]]:
        """Batch ``m`` of ``bucket`` of ``stream`` on this rank, and the ``[path, reason]`` skipped.

        Slot ``j`` of the batch is global slot ``(m * B + j) * world_size + rank``: ranks
        interleave, so they read disjoint samples.
        """
        source = self.streams[stream]
        items, skipped = [], []
        for j in range(source.batch_size):
            slot = (m * source.batch_size + j) * self.world_size + self.rank
            items.append(self._read_slot(stream, bucket, slot, skipped))
        return collate_items(items), skipped

    def _read_slot(self, stream: str, bucket: int, slot: int, skipped: list[list[str]]) -> dict:
        source = self.streams[stream]
        known = self.broken[stream]
        members = source.buckets()[bucket]
        for attempt in itertools.count():
            index = self._candidate(stream, bucket, slot, attempt)
            self.attempts += 1
            if index in known:
                self._failed(stream, known[index], skipped, members)
                continue
            dataset, local = source.locate(index)
            try:
                return dataset[local]
            except READ_ERRORS as error:
                path = str(error.path) if isinstance(error, VideoReadError) else None
                reason = error.reason if isinstance(error, VideoReadError) else str(error)
                path = path or source.path_of(index)
                known[index] = (path, reason)
                logger.warning(
                    "skipping unreadable sample in stream %r: %s: %s", stream, path, reason
                )
                self._failed(stream, known[index], skipped, members)
        raise AssertionError("unreachable")

    def _failed(
        self,
        stream: str,
        record: tuple[str, str],
        skipped: list[list[str]],
        members: np.ndarray,
    ) -> None:
        self.failures += 1
        skipped.append(list(record))
        known = self.broken[stream]
        fraction = self.failures / self.attempts
        every_member_broken = len(known) >= len(members) and all(int(i) in known for i in members)
        if every_member_broken or (
            self.attempts >= _MIN_ATTEMPTS and fraction > self.max_broken_fraction
        ):
            examples = "; ".join(f"{path}: {reason}" for path, reason in known.values())
            raise RuntimeError(
                f"{self.failures} of {self.attempts} sample reads ({fraction:.0%}) failed, more "
                f"than max_broken_fraction={self.max_broken_fraction:g} (stream {stream!r}; "
                f"broken: {examples[:500]}); fix or remove the broken files, or raise "
                "SamaDataModule(max_broken_fraction=...)"
            )


def _worker_share() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _TrainBatches(IterableDataset):
    """Endless micro-batches ``start, start + 1, ...``, each from the stream its task reads.

    Worker ``k`` of ``K`` yields the micro-batches with ``i % K == k``; the DataLoader's
    round-robin over workers restores the order.
    """

    def __init__(self, reader: _BatchReader, sampler: TaskSampler, start: int) -> None:
        self.reader = reader
        self.sampler = sampler
        self.start = start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker_share()
        stream_batches: dict[str, int] = {}
        bucket_batches: dict[tuple[str, int], int] = {}
        for i in itertools.count():
            task = self.sampler.task_at(i)
            stream = self.sampler.stream_of(task)
            n = stream_batches.get(stream, 0)
            stream_batches[stream] = n + 1
            bucket = self.reader.bucket_choice(stream, n)
            m = bucket_batches.get((stream, bucket), 0)
            bucket_batches[(stream, bucket)] = m + 1
            if i >= self.start and i % workers == worker:
                batch, skipped = self.reader.read_batch(stream, bucket, m)
                yield {**batch, "task": task, "stream": stream, "index": i, "skipped": skipped}


class _ValBatches(IterableDataset):
    """``per_task`` fixed batches for each task with a positive weight, in the sampler's order."""

    def __init__(self, reader: _BatchReader, sampler: TaskSampler, per_task: int) -> None:
        self.reader = reader
        self.specs = [
            (task, sampler.stream_of(task), n)
            for task in sampler.names
            if sampler.weights[task] > 0
            for n in range(per_task)
        ]

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker_share()
        for position, (task, stream, n) in enumerate(self.specs):
            if position % workers != worker:
                continue
            bucket = self.reader.bucket_choice(stream, n)
            m = sum(self.reader.bucket_choice(stream, k) == bucket for k in range(n))
            batch, skipped = self.reader.read_batch(stream, bucket, m)
            yield {**batch, "task": task, "stream": stream, "index": n, "skipped": skipped}


class _TrainLoader(DataLoader):
    """DataLoader that asks where to start each time it is iterated and counts what it served."""

    def __init__(self, dataset: _TrainBatches, start_fn: Callable[[], int], **kwargs: Any):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.start_fn = start_fn
        self.next_index = dataset.start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.start = self.next_index = self.start_fn()
        return self._served(super().__iter__())

    def _served(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            self.next_index = batch["index"] + 1
            yield batch


class SamaDataModule(pl.LightningDataModule):
    """Serves the ``clips``, ``video_pairs`` and ``image_pairs`` streams to the tasks.

    Args:
        clips: unpaired clip datasets (e.g. :class:`~datamodules.clips.VideoClips`).
        video_pairs: paired video edit datasets (e.g. :class:`~datamodules.edit_pairs.EditPairs`).
        image_pairs: paired image edit datasets (1-frame items).
        val_clips, val_video_pairs, val_image_pairs: validation datasets; by default the
            training datasets, from which a fixed, seeded subset is read.
        batch_size: micro-batch size of the video streams.
        image_batch_size: micro-batch size of ``image_pairs`` (default ``batch_size``).
        num_workers: dataloader worker processes.
        seed: seed of the sample order (the task order is the sampler's seed).
        val_batches_per_task: validation batches per task with a positive weight.
        max_broken_fraction: fail once more than this fraction of sample reads failed (judged
            after 20 reads); fewer broken files are skipped and reported.
        worker_timeout: seconds to wait for a worker's batch before failing (workers > 0).

    Training batches: the stream's batch dict plus ``"task"``, ``"stream"``, ``"index"``
    (micro-batch number ``i``) and ``"skipped"`` (``[path, reason]`` of samples replaced in
    this batch). The task sampler is the trainer's ``lightning_module.task_sampler``, else the
    one given to :meth:`set_task_sampler`.
    """

    def __init__(
        self,
        clips: list[Dataset] | None = None,
        video_pairs: list[Dataset] | None = None,
        image_pairs: list[Dataset] | None = None,
        val_clips: list[Dataset] | None = None,
        val_video_pairs: list[Dataset] | None = None,
        val_image_pairs: list[Dataset] | None = None,
        batch_size: int = 4,
        image_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_batches_per_task: int = 2,
        max_broken_fraction: float = 0.1,
        worker_timeout: float = 600.0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (image_batch_size is not None and image_batch_size < 1):
            raise ValueError("SamaDataModule: batch sizes must be >= 1")
        if num_workers < 0:
            raise ValueError(f"SamaDataModule: num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= max_broken_fraction <= 1.0:
            raise ValueError(
                f"SamaDataModule: max_broken_fraction must be in [0, 1], got {max_broken_fraction}"
            )
        if val_batches_per_task < 0:
            raise ValueError("SamaDataModule: val_batches_per_task must be >= 0")
        sizes = {
            "clips": batch_size,
            "video_pairs": batch_size,
            "image_pairs": image_batch_size or batch_size,
        }
        train = {"clips": clips, "video_pairs": video_pairs, "image_pairs": image_pairs}
        val = {"clips": val_clips, "video_pairs": val_video_pairs, "image_pairs": val_image_pairs}
        self.streams = {name: _Stream(name, train[name] or [], sizes[name]) for name in STREAMS}
        self.val_streams = {
            name: _Stream(name, val[name], sizes[name]) if val[name] else self.streams[name]
            for name in STREAMS
        }
        self.num_workers = num_workers
        self.seed = seed
        self.val_batches_per_task = val_batches_per_task
        self.max_broken_fraction = max_broken_fraction
        self.worker_timeout = worker_timeout
        self._sampler: TaskSampler | None = None
        self._shard = (0, 1)
        self._start = 0
        self._restored: int | None = None
        self._train_loader: _TrainLoader | None = None

    # ------------------------------------------------------------------ configuration
    def set_task_sampler(self, sampler: TaskSampler) -> None:
        """Use ``sampler`` when no trainer with a module owning ``task_sampler`` is attached."""
        self._sampler = sampler

    def set_shard(self, rank: int, world_size: int) -> None:
        """Read as rank ``rank`` of ``world_size`` when no trainer is attached."""
        if not 0 <= rank < world_size:
            raise ValueError(f"set_shard: need 0 <= rank < world_size, got {rank}, {world_size}")
        self._shard = (rank, world_size)

    def task_sampler(self) -> TaskSampler:
        """The sampler in use (the trainer's module's first, else the one set)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        sampler = getattr(module, "task_sampler", None) or self._sampler
        if sampler is None:
            raise RuntimeError(
                "SamaDataModule has no TaskSampler: attach it to a trainer whose module has "
                "`task_sampler`, or call datamodule.set_task_sampler(sampler)"
            )
        return sampler

    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``: the trainer's, else the one set with :meth:`set_shard`."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return self._shard

    # ------------------------------------------------------------------ resume
    def next_index(self) -> int:
        """Micro-batch index a fresh training loader would start at.

        With a trainer: ``global_step * accumulate_grad_batches`` (micro-batches consumed by
        the optimizer steps taken). Without: the index after the last batch the current loader
        served (or the restored / initial start).
        """
        if self._restored is not None:
            return self._restored
        if self.trainer is not None:
            return self.trainer.global_step * self.trainer.accumulate_grad_batches
        return self._train_loader.next_index if self._train_loader is not None else self._start

    def _start_next(self) -> int:
        start = self.next_index()
        self._restored = None
        return start

    def state_dict(self) -> dict[str, Any]:
        return {"next_index": self.next_index(), "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            logger.warning(
                "SamaDataModule: the checkpoint's data seed %s differs from seed=%s; the sample "
                "order after resume will differ",
                state_dict["seed"],
                self.seed,
            )
        self._restored = self._start = int(state_dict["next_index"])

    # ------------------------------------------------------------------ loaders
    def _check_streams(
        self, sampler: TaskSampler, streams: dict[str, _Stream], purpose: str
    ) -> None:
        for task in sampler.names:
            if sampler.weights[task] <= 0:
                continue
            stream = sampler.stream_of(task)
            if stream not in streams:
                raise ValueError(
                    f"task {task!r} reads stream {stream!r}, which is not one of {list(STREAMS)}"
                )
            if len(streams[stream]) == 0:
                raise ValueError(
                    f"task {task!r} reads the {stream!r} stream, but SamaDataModule has no "
                    f"{stream} data for {purpose}; pass {stream}=[...] (val_{stream}=[...] for "
                    "validation) or set the task's weight to 0"
                )
            streams[stream].buckets()

    def _reader(self, streams: dict[str, _Stream], salt: str) -> _BatchReader:
        rank, world_size = self.shard()
        return _BatchReader(
            streams,
            seed=self.seed,
            salt=salt,
            rank=rank,
            world_size=world_size,
            max_broken_fraction=self.max_broken_fraction,
        )

    def _loader_options(self) -> dict[str, Any]:
        if self.num_workers == 0:
            return {"num_workers": 0}
        return {"num_workers": self.num_workers, "timeout": self.worker_timeout}

    def train_dataloader(self) -> DataLoader:
        """One loader over all streams; see the class docstring for the batch format."""
        sampler = self.task_sampler()
        self._check_streams(sampler, self.streams, "training")
        dataset = _TrainBatches(self._reader(self.streams, "train"), sampler, self.next_index())
        self._train_loader = _TrainLoader(dataset, self._start_next, **self._loader_options())
        return self._train_loader

    def val_dataloader(self) -> DataLoader:
        """``val_batches_per_task`` fixed batches per task with a positive weight."""
        sampler = self.task_sampler()
        self._check_streams(sampler, self.val_streams, "validation")
        dataset = _ValBatches(
            self._reader(self.val_streams, "val"), sampler, self.val_batches_per_task
        )
        return DataLoader(dataset, batch_size=None, **self._loader_options())
