"""Benchmark scoring shared by ``sama test``, ``sama benchmark score`` and the EditMonitor.

:class:`EditScorer` scores edits one sample at a time, appends each finished record to
``results.partial.jsonl`` (so an interrupted run resumes without redoing samples), scores the
identity baseline (source returned unchanged) and, where ground truth exists, the oracle
(target returned), and at the end writes ``results.json`` and a self-contained
``report.html``. Layouts: videos uint8 ``(T, H, W, 3)``; masks bool ``(T, H, W)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
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

__all__ = [
    "EditScorer",
    "align_prediction",
    "benchmark_main",
    "item_texts",
    "score_edit",
    "score_predictions",
]

log = logging.getLogger(__name__)


def align_prediction(edit: Tensor, source: Tensor) -> tuple[Tensor, Tensor, list[str]]:
    """Make ``edit`` comparable with ``source`` (both uint8 ``(T, H, W, 3)``).

    The edit is resized (bicubic, antialiased) to the source's size and both are trimmed to
    the shorter length. Returns ``(edit, source, notes)`` with a note for each change.
    """
    notes = []
    if edit.shape[1:3] != source.shape[1:3]:
        notes.append(
            f"resized {edit.shape[2]}x{edit.shape[1]} -> {source.shape[2]}x{source.shape[1]}"
        )
        frames = edit.permute(0, 3, 1, 2).float()
        frames = F.interpolate(
            frames, size=tuple(source.shape[1:3]), mode="bicubic", antialias=True
        )
        edit = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if edit.shape[0] != source.shape[0]:
        n = min(edit.shape[0], source.shape[0])
        notes.append(f"trimmed to {n} frames (edit {edit.shape[0]}, source {source.shape[0]})")
        edit, source = edit[:n], source[:n]
    return edit, source, notes


def item_texts(item: EvalItem) -> list[str]:
    """The text an edit of ``item`` should match (CLIP text alignment): the target caption
    when the benchmark has one (SynthEdit's ``target_caption``, EditVerseBench's
    ``target_prompt``), otherwise the instruction. One-element list (a batch of one)."""
    return [item.caption or item.instruction]


def score_edit(
    metrics: Mapping[str, EditMetric],
    item: EvalItem,
    edit: Tensor,
    source: Tensor | None = None,
) -> dict[str, float]:
    """Score one edit of ``item`` with every metric; ``{name: value}`` (NaN = not measured).

    ``edit`` and ``source`` (default ``item.source``) are uint8 ``(T, H, W, 3)`` of one size
    (see :func:`align_prediction`); the target and mask are trimmed to the edit's length. The
    one scoring path of ``sama test``, ``sama benchmark score`` and the training-time
    ``EditMonitor``.
    """
    source = item.source if source is None else source
    n = edit.shape[0]
    as_model = lambda v: to_model_video(v[:n]).unsqueeze(0)  # noqa: E731
    target = as_model(item.target) if item.target is not None else None
    mask = None
    if item.mask is not None:
        mask = item.mask[:n].unsqueeze(0).unsqueeze(0).float()
    edit_m, source_m = as_model(edit), as_model(source)
    texts = item_texts(item)
    return {
        name: float(metric.score(edit_m, source=source_m, target=target, mask=mask, texts=texts)[0])
        for name, metric in metrics.items()
    }


class EditScorer:
    """Score edits of one benchmark into ``out_dir``.

    Args:
        out_dir: receives ``results.partial.jsonl``, ``thumbs/``, ``results.json``,
            ``report.html``.
        has_target / has_mask: what ground truth the benchmark has (decides the metrics).
        clip_path / dino_path: optional local model dirs for CLIP / DINO metrics.
        judge: optional :class:`~sama.evaluation.judge.VLMJudge`.
        config / checkpoint_hash: stored in ``results.json``.
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
    ) -> None:
        self.out_dir = Path(out_dir)
        self.thumbs = self.out_dir / "thumbs"
        self.thumbs.mkdir(parents=True, exist_ok=True)
        self.metrics, notices = build_metrics(
            clip_path, dino_path, has_target=has_target, has_mask=has_mask
        )
        self.notices = list(notices)
        if judge is None:
            self.notices.append("VLM judge skipped: no --judge-url given")
        self.judge = judge
        self.config = dict(config or {})
        self.checkpoint_hash = checkpoint_hash
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

    def _scores(self, item: EvalItem, edit: Tensor, source: Tensor) -> dict[str, float]:
        scores = score_edit(self.metrics, item, edit, source)
        if self.judge is not None:
            try:
                scores.update(self.judge.judge(source, edit, item.instruction).as_metrics())
            except JudgeError as err:
                self.note(f"judge failed on {item.id}: {err}")
        return scores

    def _thumb(self, item_id: str, role: str, video: Tensor) -> str:
        path = item_file(self.thumbs, item_id, f"_{role}.png")
        if not path.exists():
            write_png(path, frame_strip(video.numpy()))
        return str(path)

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
        edit, source, notes = align_prediction(edit, item.source)
        for note in notes:
            self.note(f"{system}: predictions were {note.split(' ')[0]} to match the sources")
        record = {
            "id": item.id,
            "category": item.category,
            "system": system,
            "instruction": item.instruction,
            "metrics": self._scores(item, edit, source),
            "paths": {"source": item.source_path},
        }
        if prediction_sha256 is not None:
            record["prediction_sha256"] = prediction_sha256
        self._thumb(item.id, "source", source)
        if system == "model":
            self._thumb(item.id, "edit", edit)
        if item.target is not None:
            self._thumb(item.id, "target", item.target)
        self.log.append(record)
        self._done.add((item.id, system))
        self._records[(item.id, system)] = record
        return record

    def add_baselines(self, item: EvalItem) -> None:
        """Score the identity baseline and, with ground truth, the oracle (once per sample)."""
        if not self.done(item.id, "identity"):
            self.add(item, item.source, "identity")
        if item.target is not None and not self.done(item.id, "oracle"):
            self.add(item, item.target, "oracle")

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


def score_predictions(
    benchmark: EvalSet,
    predictions: str | Path,
    output: str | Path,
    **scorer_kwargs: Any,
) -> tuple[Path, Path]:
    """Score another editor's outputs ``predictions/<id>.mp4`` on ``benchmark``.

    A sample scored by an earlier run is reused only when its prediction file still has the
    SHA-256 stored with the record; a changed file is scored anew, and the record of a file
    now missing or unreadable is withdrawn.

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
    config = {**scorer_kwargs.pop("config", {}), **benchmark.describe()}
    config["predictions"] = str(predictions)
    scorer = EditScorer(
        output,
        has_target=benchmark.has_target,
        has_mask=benchmark.has_mask,
        config=config,
        **scorer_kwargs,
    )
    missing, unreadable = [], []
    for index in tqdm(range(len(benchmark)), desc="scoring"):
        item = benchmark.item(index)
        scorer.add_baselines(item)
        path = item_file(predictions, item.id, ".mp4")
        if not path.is_file():
            missing.append(item.id)
            scorer.discard(item.id)
            continue
        digest = sha256_file(path)
        cached = scorer.record(item.id)
        if cached is not None and cached.get("prediction_sha256") == digest:
            continue
        scorer.discard(item.id)  # scored from other bytes (or before hashes were stored)
        try:
            edit, _ = read_video(path)
        except VideoReadError as err:
            unreadable.append(item.id)
            scorer.note(f"prediction for {item.id} unreadable: {err.reason}")
            continue
        scorer.add(item, edit, prediction_sha256=digest)
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
        )
    except (OSError, ValueError, VideoReadError) as err:
        if verbose_errors():
            raise
        print(f"sama benchmark score: error: {err}", file=sys.stderr)
        return 2
    print(f"results: {results}\nreport:  {report}")
    return 0
