"""Benchmark scoring shared by ``sama test``, ``sama benchmark score`` and the EditMonitor.

:class:`EditScorer` scores edits one sample at a time, appends each finished record to
``results.partial.jsonl`` (so an interrupted run resumes without redoing samples), scores the
identity baseline (source returned unchanged) and, where ground truth exists, the oracle
(target returned), and at the end writes ``results.json`` and a self-contained
``report.html``. Layouts: videos uint8 ``(T, H, W, 3)``; masks bool ``(T, H, W)``.

Metrics run at the *evaluation resolution* (``eval_short_side``, default
:data:`DEFAULT_EVAL_SHORT_SIDE`): a sample whose short side is larger is downscaled (videos
bicubic antialiased, masks by area coverage) before any metric sees it; smaller samples are
scored as they are. :func:`score_predictions` spreads samples over worker processes
(``workers``); only the parent process writes the per-sample log, in benchmark order.
See docs/evaluation.md, "Evaluation resolution and workers".
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.eval_sets import EditVerseBench, EvalItem, EvalSet, ManifestEvalSet, item_file
from sama.evaluation.html import write_report
from sama.evaluation.judge import JudgeError, VLMJudge
from sama.evaluation.metrics import EditMetric, build_metrics
from sama.evaluation.results import PARTIAL_FILENAME, ResultsLog, write_results
from sama.files import atomic_write_text, sha256_file
from sama.images import frame_strip, write_png
from sama.io import VideoReadError, read_video, to_model_video
from sama.pipeline import verbose_errors

#: settings + checkpoint hash of the samples in ``results.partial.jsonl`` (resume guard)
RUN_KEY_FILENAME = "run_key.json"

DEFAULT_EVAL_SHORT_SIDE = 256
"""Short side (pixels) that benchmark samples are downscaled to before scoring; 0 = native.

256 is the input side of the EfficientNet feature metrics and above the 224 of CLIP / DINO,
so those see almost the same pixels as at native resolution, while the pixel and optical-flow
metrics (the bulk of the time) get 3-8x fewer pixels on 480p-1080p clips."""

MAX_DEFAULT_WORKERS = 4
"""Most worker processes :func:`default_workers` picks (memory: each holds one sample)."""

__all__ = [
    "DEFAULT_EVAL_SHORT_SIDE",
    "EditScorer",
    "WorkerDiedError",
    "align_prediction",
    "benchmark_main",
    "default_workers",
    "eval_size",
    "item_texts",
    "resize_mask",
    "resize_video",
    "score_edit",
    "score_predictions",
]

log = logging.getLogger(__name__)


def align_prediction(
    edit: Tensor, source: Tensor, size: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """Make ``edit`` comparable with ``source`` (both uint8 ``(T, H, W, 3)``).

    An edit whose size differs from the source's is resized (bicubic, antialiased) to the
    source's size, or straight to ``size = (H, W)`` when given (the evaluation size: one
    resize instead of two); both are trimmed to the shorter length. Returns
    ``(edit, source, notes)`` with a note for each change.
    """
    notes = []
    if edit.shape[1:3] != source.shape[1:3]:
        notes.append(
            f"resized {edit.shape[2]}x{edit.shape[1]} -> {source.shape[2]}x{source.shape[1]}"
        )
        frames = edit.permute(0, 3, 1, 2).float()
        out_size = tuple(size) if size is not None else tuple(source.shape[1:3])
        frames = F.interpolate(frames, size=out_size, mode="bicubic", antialias=True)
        edit = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if edit.shape[0] != source.shape[0]:
        n = min(edit.shape[0], source.shape[0])
        notes.append(f"trimmed to {n} frames (edit {edit.shape[0]}, source {source.shape[0]})")
        edit, source = edit[:n], source[:n]
    return edit, source, notes


def eval_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """The ``(H, W)`` a ``height x width`` sample is scored at.

    Frames whose short side exceeds ``short_side`` are scaled down (aspect ratio kept, sides
    rounded to whole pixels, the short side exactly ``short_side``); smaller frames and
    ``short_side`` 0 / None (native resolution) keep their size. Never upscales.
    """
    if short_side is None or short_side <= 0 or min(height, width) <= short_side:
        return height, width
    scale = short_side / min(height, width)
    if height <= width:
        return short_side, max(1, round(width * scale))
    return max(1, round(height * scale)), short_side


_RESIZE_CHUNK = 16  # frames per interpolate call (bounds the working memory)


def resize_video(video: Tensor, size: tuple[int, int]) -> Tensor:
    """Downscale uint8 ``(T, H, W, 3)`` frames to ``size = (h, w)``: bicubic, antialiased
    (torch's uint8 kernel); returns uint8 ``(T, h, w, 3)``. The input itself when it is
    already that size."""
    if tuple(video.shape[1:3]) == tuple(size):
        return video
    chunks = [
        F.interpolate(
            video[i : i + _RESIZE_CHUNK].permute(0, 3, 1, 2),
            size=tuple(size),
            mode="bicubic",
            antialias=True,
        )
        .permute(0, 2, 3, 1)
        .contiguous()
        for i in range(0, video.shape[0], _RESIZE_CHUNK)
    ]
    return torch.cat(chunks)


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A mask ``(T, H, W)`` (bool or [0, 1]) as float32 ``(T, h, w)`` in [0, 1] at ``size``.

    Downscaling averages over area, so each pixel's value is the fraction of the native pixels
    it covers that are edited (a soft mask: the metrics weight pixels by it). An all-zero or
    all-one mask stays all zero / all one. At the same size the values are unchanged (0 / 1).
    """
    mask = mask.float()
    if tuple(mask.shape[1:3]) == tuple(size):
        return mask
    out = F.interpolate(mask.unsqueeze(1), size=tuple(size), mode="area").squeeze(1)
    return out.clamp(0.0, 1.0)


def item_texts(item: EvalItem) -> list[str]:
    """The text an edit of ``item`` should match (CLIP text alignment): the target caption
    when the benchmark has one (SynthEdit's ``target_caption``, EditVerseBench's
    ``target_prompt``), otherwise the instruction. One-element list (a batch of one)."""
    return [item.caption or item.instruction]


class _EvalSample:
    """One sample's source, target and mask at the evaluation resolution, shared by every system
    scored on it (each is resized and converted to the metrics' layout once).

    ``source`` uint8 ``(T, H, W, 3)`` (default ``item.source``); target uint8 of the same size;
    mask ``(T, H, W)``. The model-layout tensors are ``(1, 3, T, h, w)`` in [-1, 1] and the
    mask ``(1, 1, T, h, w)`` in [0, 1].
    """

    def __init__(self, item: EvalItem, source: Tensor, short_side: int | None) -> None:
        height, width = source.shape[1:3]
        for name in ("target", "mask"):
            video = getattr(item, name)
            if video is not None and tuple(video.shape[1:3]) != (height, width):
                raise ValueError(
                    f"sample {item.id}: `{name}` is {video.shape[2]}x{video.shape[1]} but the "
                    f"source is {width}x{height}; they must have one size"
                )
        self.size = eval_size(height, width, short_side)
        self.source = resize_video(source, self.size)
        self.target = resize_video(item.target, self.size) if item.target is not None else None
        self.mask = resize_mask(item.mask, self.size) if item.mask is not None else None
        self.texts = item_texts(item)
        self._model: dict[tuple[str, int], Tensor] = {}

    def _as_model(self, name: str, n: int) -> Tensor | None:
        key = (name, n)
        if key not in self._model:
            video = getattr(self, name)
            if video is None:
                return None
            if name == "mask":
                self._model[key] = video[:n].unsqueeze(0).unsqueeze(0)
            else:
                self._model[key] = to_model_video(video[:n]).unsqueeze(0)
        return self._model[key]

    def edit_frames(self, edit: Tensor) -> Tensor:
        """An edit (uint8 ``(T, H, W, 3)`` at the source's native size) at the evaluation size."""
        return resize_video(edit, self.size)

    def score(self, metrics: Mapping[str, EditMetric], edit: Tensor) -> dict[str, float]:
        """Every metric on ``edit`` (uint8 ``(n, h, w, 3)`` at the evaluation size, ``n`` at
        most the source's length; the source, target and mask are trimmed to ``n``). Passing
        ``self.source`` itself (the identity baseline) reuses its tensor."""
        n = edit.shape[0]
        source_m = self._as_model("source", n)
        edit_m = source_m if edit is self.source else to_model_video(edit).unsqueeze(0)
        if self.target is not None and edit is self.target:
            edit_m = self._as_model("target", n)
        target_m = self._as_model("target", n)
        mask_m = self._as_model("mask", n)
        return {
            name: float(
                metric.score(
                    edit_m, source=source_m, target=target_m, mask=mask_m, texts=self.texts
                )[0]
            )
            for name, metric in metrics.items()
        }


def score_edit(
    metrics: Mapping[str, EditMetric],
    item: EvalItem,
    edit: Tensor,
    source: Tensor | None = None,
    *,
    eval_short_side: int | None = None,
) -> dict[str, float]:
    """Score one edit of ``item`` with every metric; ``{name: value}`` (NaN = not measured).

    ``edit`` and ``source`` (default ``item.source``) are uint8 ``(T, H, W, 3)`` of one size
    (see :func:`align_prediction`); the target and mask are trimmed to the edit's length. With
    ``eval_short_side`` the videos and mask are first brought to :func:`eval_size` (default:
    native size). The one scoring path of ``sama test``, ``sama benchmark score`` and the
    training-time ``EditMonitor``.
    """
    source = item.source if source is None else source
    sample = _EvalSample(item, source, eval_short_side)
    if edit is source:
        return sample.score(metrics, sample.source)
    return sample.score(metrics, sample.edit_frames(edit))


class _SampleScorer:
    """The metrics (and judge) and how to apply them: scores the systems of one sample into
    records and writes their thumbnails. Holds no log, so a worker process can own one."""

    def __init__(
        self,
        metrics: Mapping[str, EditMetric],
        thumbs: Path,
        eval_short_side: int | None,
        judge: VLMJudge | None = None,
    ) -> None:
        self.metrics = metrics
        self.thumbs = thumbs
        self.eval_short_side = eval_short_side
        self.judge = judge

    def _thumb(self, item_id: str, role: str, video: Tensor) -> None:
        path = item_file(self.thumbs, item_id, f"_{role}.png")
        if not path.exists():
            write_png(path, frame_strip(video.numpy()))

    def score(
        self,
        item: EvalItem,
        edits: Mapping[str, Tensor],
        prediction_sha256: Mapping[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Records of ``edits`` (``{system: uint8 (T, H, W, 3)}``, any size: each is aligned
        to the source as :func:`align_prediction` does) and the notices they raise. The
        source, target and mask are brought to the evaluation resolution once for all."""
        records: list[dict[str, Any]] = []
        notes: list[str] = []
        if not edits:
            return records, notes
        sample = _EvalSample(item, item.source, self.eval_short_side)
        for system, edit in edits.items():
            if edit is item.source:
                frames, native, native_source = sample.source, edit, item.source
            elif item.target is not None and edit is item.target:
                frames, native, native_source = sample.target, edit, item.source
                assert frames is not None
                if frames.shape[0] > item.source.shape[0]:
                    frames = frames[: item.source.shape[0]]
            else:
                native, native_source, changes = align_prediction(
                    edit, item.source, size=sample.size if self.judge is None else None
                )
                for change in changes:
                    notes.append(
                        f"{system}: predictions were {change.split(' ')[0]} to match the sources"
                    )
                frames = sample.edit_frames(native)
            scores = sample.score(self.metrics, frames)
            if self.judge is not None:
                try:
                    n = frames.shape[0]  # the judge sees native frames, trimmed alike
                    verdict = self.judge.judge(native_source[:n], native[:n], item.instruction)
                    scores.update(verdict.as_metrics())
                except JudgeError as err:
                    notes.append(f"judge failed on {item.id}: {err}")
            record: dict[str, Any] = {
                "id": item.id,
                "category": item.category,
                "system": system,
                "instruction": item.instruction,
                "metrics": scores,
                "eval_size": [int(frames.shape[1]), int(frames.shape[2])],
                "paths": {"source": item.source_path},
            }
            if prediction_sha256 and system in prediction_sha256:
                record["prediction_sha256"] = prediction_sha256[system]
            self._thumb(item.id, "source", sample.source)
            if system == "model":
                self._thumb(item.id, "edit", frames)
            if sample.target is not None:
                self._thumb(item.id, "target", sample.target)
            records.append(record)
        return records, notes


class EditScorer:
    """Score edits of one benchmark into ``out_dir``.

    Args:
        out_dir: receives ``results.partial.jsonl``, ``thumbs/``, ``results.json``,
            ``report.html``.
        has_target / has_mask: what ground truth the benchmark has (decides the metrics).
        clip_path / dino_path: optional local model dirs for CLIP / DINO metrics.
        judge: optional :class:`~sama.evaluation.judge.VLMJudge`.
        config / checkpoint_hash: stored in ``results.json``.
        eval_short_side: evaluation resolution (:func:`eval_size`; 0 or None = native). Stored
            in the config as ``eval_short_side``, so it is part of the resume guard.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        has_target: bool,
        has_mask: bool,
        clip_path: str | None = None,
        dino_path: str | None = None,
        judge: VLMJudge | None = None,
        config: dict[str, Any] | None = None,
        checkpoint_hash: str | None = None,
        eval_short_side: int | None = DEFAULT_EVAL_SHORT_SIDE,
    ) -> None:
        short_side = int(eval_short_side or 0)
        if short_side < 0:
            raise ValueError(f"eval_short_side must be >= 0 (0 = native), got {short_side}")
        self.out_dir = Path(out_dir)
        self.thumbs = self.out_dir / "thumbs"
        self.thumbs.mkdir(parents=True, exist_ok=True)
        self.has_target, self.has_mask = has_target, has_mask
        self.clip_path, self.dino_path = clip_path, dino_path
        self.metrics, notices = build_metrics(
            clip_path, dino_path, has_target=has_target, has_mask=has_mask
        )
        self.notices = list(notices)
        if judge is None:
            self.notices.append("VLM judge skipped: no --judge-url given")
        self.judge = judge
        self.eval_short_side = short_side
        self.config = {**dict(config or {}), "eval_short_side": short_side}
        self.checkpoint_hash = checkpoint_hash
        self.sample_scorer = _SampleScorer(self.metrics, self.thumbs, short_side, judge)
        self._start_or_resume()
        self.log = ResultsLog(self.out_dir)
        self._records = {(str(r["id"]), r.get("system") or "model"): r for r in self.log.records()}
        self._done = set(self._records)

    def _start_or_resume(self) -> None:
        """Resume the per-sample log only when it was written with the same benchmark settings
        and checkpoint; otherwise set it aside (renamed, not deleted) and start afresh."""
        key = {"config": self.config, "checkpoint_sha256": self.checkpoint_hash}
        key = json.loads(json.dumps(key, default=str))
        meta = self.out_dir / RUN_KEY_FILENAME
        partial = self.out_dir / PARTIAL_FILENAME
        previous = json.loads(meta.read_text()) if meta.is_file() else None
        if partial.exists() and previous != key:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = partial.with_name(f"results.partial.{stamp}.stale.jsonl")
            partial.rename(aside)
            self.note(f"earlier samples in {aside.name} came from other settings; not reused")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta, json.dumps(key, indent=2) + "\n")

    def done(self, sample_id: str, system: str = "model") -> bool:
        return (sample_id, system) in self._done

    def record(self, sample_id: str, system: str = "model") -> dict[str, Any] | None:
        """The logged record of ``(sample_id, system)``, or None."""
        return self._records.get((sample_id, system))

    def discard(self, sample_id: str, system: str = "model") -> None:
        """Withdraw a logged record (it no longer counts, and the sample is scored anew)."""
        if (sample_id, system) in self._done:
            self.log.discard(sample_id, system)
            self._done.discard((sample_id, system))
            self._records.pop((sample_id, system), None)

    def note(self, message: str) -> None:
        if message not in self.notices:
            self.notices.append(message)

    def commit(self, record: dict[str, Any]) -> None:
        """Append a finished record (from :meth:`score` or a worker) to the per-sample log."""
        key = (str(record["id"]), str(record.get("system") or "model"))
        self.log.append(record)
        self._done.add(key)
        self._records[key] = record

    def score(
        self,
        item: EvalItem,
        edits: Mapping[str, Tensor],
        prediction_sha256: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Records of several systems' edits of ``item`` (``{system: uint8 (T, H, W, 3)}``),
        scored against one evaluation-resolution copy of the source, target and mask; not
        logged (see :meth:`commit`)."""
        records, notes = self.sample_scorer.score(item, edits, prediction_sha256)
        for message in notes:
            self.note(message)
        return records

    def add(
        self,
        item: EvalItem,
        edit: Tensor,
        system: str = "model",
        *,
        prediction_sha256: str | None = None,
    ) -> dict[str, Any]:
        """Score one edit (uint8 ``(T, H, W, 3)``) of ``item`` and log the record (with the
        SHA-256 of the prediction file it was read from, when given: the resume guard of
        :func:`score_predictions`)."""
        digests = {system: prediction_sha256} if prediction_sha256 is not None else None
        (record,) = self.score(item, {system: edit}, digests)
        self.commit(record)
        return record

    def add_baselines(self, item: EvalItem) -> None:
        """Score the identity baseline and, with ground truth, the oracle (once per sample)."""
        for record in self.score(item, _baseline_edits(item, self.done)):
            self.commit(record)

    def finish(self) -> tuple[Path, Path]:
        """Write ``results.json`` and ``report.html`` from every logged record."""
        records = self.log.records()
        results = write_results(
            self.out_dir,
            records,
            config=self.config,
            checkpoint_hash=self.checkpoint_hash,
            notices=self.notices,
        )
        thumbnails: dict[str, dict[str, str]] = {}
        for record in records:
            roles = {}
            for role in ("source", "edit", "target"):
                path = item_file(self.thumbs, str(record["id"]), f"_{role}.png")
                if path.exists():
                    roles[role] = str(path)
            thumbnails[str(record["id"])] = roles
        report = write_report(self.out_dir, results, thumbnails=thumbnails)
        return results, report


def _baseline_edits(item: EvalItem, done: Any) -> dict[str, Tensor]:
    """The baseline systems of ``item`` not yet scored (``done(id, system)`` says which are)."""
    edits = {}
    if not done(item.id, "identity"):
        edits["identity"] = item.source
    if item.target is not None and not done(item.id, "oracle"):
        edits["oracle"] = item.target
    return edits


def default_workers() -> int:
    """Worker processes for :func:`score_predictions`: the usable CPU cores, at most
    :data:`MAX_DEFAULT_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


@dataclass
class _IndexJob:
    """What scoring one benchmark index needs, in a worker or in process (picklable)."""

    benchmark: EvalSet
    predictions: Path
    #: ``(id, system) -> prediction SHA-256`` (None for baselines) of the records already logged
    logged: dict[tuple[str, str], str | None] = field(default_factory=dict)


@dataclass
class _IndexResult:
    """One index scored: new records (baselines first, then the model's) and what happened to
    the model's prediction: ``"scored"``, ``"cached"``, ``"missing"`` or ``"unreadable"``."""

    index: int
    id: str
    records: list[dict[str, Any]]
    status: str
    notes: list[str]
    reason: str = ""


def _score_index(scorer: _SampleScorer, job: _IndexJob, index: int) -> _IndexResult:
    """Load sample ``index``, score its unscored baselines and (when its file changed) the
    prediction ``<id>.mp4``; the records are returned, not logged."""
    item = job.benchmark.item(index)
    edits = _baseline_edits(item, lambda i, s: (i, s) in job.logged)
    path = item_file(job.predictions, item.id, ".mp4")
    status, reason, digests = "scored", "", {}
    if not path.is_file():
        status = "missing"
    else:
        digest = sha256_file(path)
        if (item.id, "model") in job.logged and job.logged[(item.id, "model")] == digest:
            status = "cached"
        else:
            try:
                edits["model"], _ = read_video(path)
                digests["model"] = digest
            except VideoReadError as err:
                status, reason = "unreadable", err.reason
    records, notes = scorer.score(item, edits, digests)
    return _IndexResult(index, item.id, records, status, notes, reason)


_WORKER: tuple[_SampleScorer, _IndexJob] | None = None


def _worker_init(settings: dict[str, Any], job: _IndexJob) -> None:
    """Worker process start: one thread for torch and OpenCV (the parallelism is the
    processes), and its own metrics."""
    global _WORKER
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    metrics, _ = build_metrics(
        settings["clip_path"],
        settings["dino_path"],
        has_target=settings["has_target"],
        has_mask=settings["has_mask"],
    )
    _WORKER = (_SampleScorer(metrics, settings["thumbs"], settings["eval_short_side"]), job)


def _worker_score(index: int) -> _IndexResult | tuple[str, str, str]:
    """Score ``index`` in a worker. A :class:`VideoReadError` (which does not pickle) comes back
    as ``("VideoReadError", path, reason)`` and is raised again in the parent."""
    assert _WORKER is not None, "worker not initialised"
    try:
        return _score_index(*_WORKER, index)
    except VideoReadError as err:
        return ("VideoReadError", str(err.path), err.reason)


def _pool_context() -> Any:
    """How worker processes start: ``forkserver`` where available (workers fork from a clean
    process that imported the scorer once: fast to start, and safe however many threads this
    process runs; plain ``fork`` deadlocked in tests once torch had run multi-threaded here),
    ``spawn`` elsewhere. Both need the caller's ``if __name__ == "__main__":`` guard."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["sama.evaluation.scorer"])
        return context
    return multiprocessing.get_context("spawn")


def _in_process_reason(scorer: EditScorer, job: _IndexJob) -> str | None:
    """Why these samples must be scored in this process, or None when workers can."""
    if scorer.judge is not None:
        return "the VLM judge runs in the main process"
    try:
        pickle.dumps(job)
    except Exception as err:  # noqa: BLE001 - any pickling failure means: no workers
        return f"the benchmark cannot be sent to worker processes ({type(err).__name__})"
    return None


class WorkerDiedError(RuntimeError):
    """A scoring worker process ended abruptly (killed, e.g. out of memory)."""


def _scored_in_order(scorer: EditScorer, job: _IndexJob, workers: int) -> Iterator[_IndexResult]:
    """Yield the :class:`_IndexResult` of every benchmark index in order, from ``workers``
    processes (or this one for ``workers <= 1``)."""
    count = len(job.benchmark)
    workers = min(workers, count)
    reason = _in_process_reason(scorer, job) if workers > 1 else None
    if reason is not None:
        scorer.note(f"samples scored in one process: {reason}")
    if workers <= 1 or reason is not None:
        for index in range(count):
            yield _score_index(scorer.sample_scorer, job, index)
        return
    settings = {
        "clip_path": scorer.clip_path,
        "dino_path": scorer.dino_path,
        "has_target": scorer.has_target,
        "has_mask": scorer.has_mask,
        "thumbs": scorer.thumbs,
        "eval_short_side": scorer.eval_short_side,
    }
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_pool_context(),
        initializer=_worker_init,
        initargs=(settings, job),
    )
    try:
        futures: list[Future] = [pool.submit(_worker_score, index) for index in range(count)]
        for future in futures:
            try:
                result = future.result()
            except BrokenProcessPool as err:
                raise WorkerDiedError(
                    f"a scoring worker process died ({err}); the samples finished so far are "
                    "kept in results.partial.jsonl: rerun with fewer --workers (each holds one "
                    "sample in memory) to resume"
                ) from None
            if isinstance(result, tuple):
                raise VideoReadError(result[1], result[2])
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def score_predictions(
    benchmark: EvalSet,
    predictions: str | Path,
    output: str | Path,
    *,
    workers: int | None = None,
    **scorer_kwargs: Any,
) -> tuple[Path, Path]:
    """Score another editor's outputs ``predictions/<id>.mp4`` on ``benchmark``.

    A sample scored by an earlier run is reused only when its prediction file still has the
    SHA-256 stored with the record; a changed file is scored anew, and the record of a file
    now missing or unreadable is withdrawn. Samples are loaded and scored by ``workers``
    processes (default :func:`default_workers`; 0 or 1 = in this process); the records are
    logged by this process alone, in benchmark order, as each sample in turn finishes, so the
    log and the results are the same for any number of workers. ``scorer_kwargs`` go to
    :class:`EditScorer` (``eval_short_side``, ``clip_path``, ``judge``, ...).

    Raises:
        FileNotFoundError: ``predictions`` is not a folder.
        ValueError: the benchmark has no samples, or not one prediction could be scored.
    """
    predictions = Path(predictions)
    if not predictions.is_dir():
        raise FileNotFoundError(f"predictions folder {predictions} does not exist")
    if len(benchmark) == 0:
        where = benchmark.describe().get("manifest") or benchmark.name
        raise ValueError(f"{where}: the benchmark has no samples; nothing to score")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 or 1 = in process), got {workers}")
    config = {**scorer_kwargs.pop("config", {}), **benchmark.describe()}
    config["predictions"] = str(predictions)
    scorer = EditScorer(
        output,
        has_target=benchmark.has_target,
        has_mask=benchmark.has_mask,
        config=config,
        **scorer_kwargs,
    )
    logged = {
        (str(r["id"]), str(r.get("system") or "model")): r.get("prediction_sha256")
        for r in scorer.log.records()
    }
    job = _IndexJob(benchmark, predictions, logged)
    missing, unreadable = [], []
    results = _scored_in_order(scorer, job, workers)
    for result in tqdm(results, total=len(benchmark), desc="scoring"):
        for message in result.notes:
            scorer.note(message)
        records = list(result.records)
        model = records.pop() if records and records[-1]["system"] == "model" else None
        for record in records:
            scorer.commit(record)
        if result.status == "missing":
            missing.append(result.id)
            scorer.discard(result.id)
        elif result.status != "cached":
            scorer.discard(result.id)  # scored from other bytes (or before hashes were stored)
            if result.status == "unreadable":
                unreadable.append(result.id)
                scorer.note(f"prediction for {result.id} unreadable: {result.reason}")
            elif model is not None:
                scorer.commit(model)
    if len(missing) + len(unreadable) == len(benchmark):
        first = (missing or unreadable)[0]
        raise ValueError(
            f"no usable prediction in {predictions}: {len(missing)} of {len(benchmark)} missing, "
            f"{len(unreadable)} unreadable (expected <id>.mp4, e.g. {first}.mp4); point "
            "--predictions at the folder of the edits"
        )
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        scorer.note(f"{len(missing)} prediction(s) missing from {predictions}: {shown}")
    return scorer.finish()


def _load_benchmark(args: argparse.Namespace) -> EvalSet:
    if args.format == "editverse":
        return EditVerseBench(args.manifest, max_samples=args.max_samples)
    return ManifestEvalSet(args.manifest, max_samples=args.max_samples)


def _non_negative(flag: str) -> Any:
    """An argparse type: an integer >= 0, else an error naming ``flag``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs an integer, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 0, got {value}")
        return value

    return parse


def benchmark_main(argv: list[str] | None = None) -> int:
    """``sama benchmark score``: score another editor's outputs (see docs/evaluation.md)."""
    parser = argparse.ArgumentParser(prog="sama benchmark", description=benchmark_main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score DIR/<id>.mp4 predictions against a manifest")
    score.add_argument("--manifest", required=True, help="JSONL manifest (or EditVerseBench json)")
    score.add_argument("--format", choices=("manifest", "editverse"), default="manifest")
    score.add_argument("--predictions", required=True, help="folder holding <id>.mp4 edits")
    score.add_argument("--output", required=True, help="folder for results.json / report.html")
    score.add_argument("--max-samples", type=int, default=None)
    score.add_argument("--clip-path", default=None, help="local CLIP model dir (optional)")
    score.add_argument("--dino-path", default=None, help="local DINO model dir (optional)")
    score.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (optional)")
    score.add_argument("--judge-model", default=None)
    score.add_argument("--judge-key-env", default="OPENAI_API_KEY")
    score.add_argument(
        "--eval-short-side",
        type=_non_negative("--eval-short-side"),
        default=DEFAULT_EVAL_SHORT_SIDE,
        help="score at this short side in pixels: larger samples are downscaled, smaller ones "
        f"kept (default {DEFAULT_EVAL_SHORT_SIDE}; 0 = native resolution)",
    )
    score.add_argument(
        "--workers",
        type=_non_negative("--workers"),
        default=None,
        help="processes scoring samples in parallel (default: CPU cores, at most "
        f"{MAX_DEFAULT_WORKERS}; 0 or 1 = in this process)",
    )
    args = parser.parse_args(argv)
    judge = None
    if args.judge_url:
        if not args.judge_model:
            parser.error("--judge-url needs --judge-model")
        judge = VLMJudge(
            args.judge_url,
            args.judge_model,
            api_key_env=args.judge_key_env,
            cache_dir=Path(args.output) / "judge_cache",
        )
    try:
        benchmark = _load_benchmark(args)
        results, report = score_predictions(
            benchmark,
            args.predictions,
            args.output,
            clip_path=args.clip_path,
            dino_path=args.dino_path,
            judge=judge,
            eval_short_side=args.eval_short_side,
            workers=args.workers,
        )
    except (OSError, ValueError, VideoReadError, WorkerDiedError) as err:
        if verbose_errors():
            raise
        print(f"sama benchmark score: error: {err}", file=sys.stderr)
        return 2
    print(f"results: {results}\nreport:  {report}")
    return 0
