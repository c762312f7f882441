"""Evaluation results: the record format, ``results.json`` and the resumable per-sample log.

A *record* is one evaluated sample of one system::

    {"id": "0007", "category": "swap", "system": "model",      # system defaults to "model"
     "instruction": "make the car red",                        # optional
     "metrics": {"psnr": 27.1, "warp_error": 0.012, ...},      # None / NaN = not measured
     "paths": {"source": "...", "edit": "...", "target": "..."}}

Systems other than ``"model"`` are baselines scored on the same samples: ``"identity"``
(edit = source) is the floor for editing metrics and the ceiling for preservation;
``"oracle"`` (edit = target) is the ceiling for ground-truth metrics. See docs/evaluation.md
for the ``results.json`` schema; :mod:`sama.evaluation.html` renders it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sama import __version__
from sama.evaluation.judge import JUDGE_METRIC_NAMES
from sama.evaluation.metrics import metric_directions
from sama.files import atomic_write_text

__all__ = [
    "BASELINE_SYSTEMS",
    "PARTIAL_FILENAME",
    "RESULTS_FILENAME",
    "SCHEMA_VERSION",
    "ResultsLog",
    "default_directions",
    "write_results",
]

SCHEMA_VERSION = 1
RESULTS_FILENAME = "results.json"
PARTIAL_FILENAME = "results.partial.jsonl"
#: marks a tombstone line of :meth:`ResultsLog.discard` (the record it names is withdrawn)
DISCARDED_KEY = "discarded"

BASELINE_SYSTEMS = {
    "identity": "edit = source (no edit): floor for editing metrics, ceiling for preservation",
    "oracle": "edit = target (ground truth): ceiling for the ground-truth metrics",
}
"""Known baseline systems and what they bound."""


def default_directions() -> dict[str, bool]:
    """``{metric: higher_is_better}`` of every metric and judge score this package defines."""
    directions = metric_directions()
    directions.update(dict.fromkeys(JUDGE_METRIC_NAMES, True))
    return directions


def _clean_value(value: Any) -> float | None:
    """A metric value as a finite float, or None (missing, NaN or infinite)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Paths -> str, numpy / torch scalars -> Python, non-finite floats -> None, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _normalize_record(record: Mapping[str, Any], index: int) -> dict[str, Any]:
    if "id" not in record:
        raise ValueError(f"record {index} has no 'id': every record needs id, category, metrics")
    out = _jsonable(dict(record))
    out["id"] = str(record["id"])
    out["category"] = str(record.get("category") or "uncategorized")
    out["system"] = str(record.get("system") or "model")
    metrics = record.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise ValueError(f"record {index} ({out['id']}): 'metrics' must be a dict name -> value")
    out["metrics"] = {str(k): _clean_value(v) for k, v in metrics.items()}
    out["paths"] = _jsonable(dict(record.get("paths") or {}))
    return out


def _system_order(systems: Iterable[str]) -> list[str]:
    present = set(systems)
    order = ["model"] if "model" in present else []
    order += [s for s in BASELINE_SYSTEMS if s in present]
    order += sorted(present - set(order))
    return order


def _summarize(records: list[dict[str, Any]], metric_names: list[str]) -> dict[str, Any]:
    """``{"count": n_samples, "metrics": {name: {"mean": x | None, "count": k}}}``."""
    summary: dict[str, Any] = {"count": len(records), "metrics": {}}
    for name in metric_names:
        values = [r["metrics"][name] for r in records if r["metrics"].get(name) is not None]
        mean = sum(values) / len(values) if values else None
        summary["metrics"][name] = {"mean": mean, "count": len(values)}
    return summary


def write_results(
    out_dir: str | Path,
    records: list[dict[str, Any]],
    *,
    config: dict[str, Any],
    checkpoint_hash: str | None,
    notices: list[str],
    directions: Mapping[str, bool] | None = None,
) -> Path:
    """Write ``out_dir/results.json`` atomically and return its path.

    Args:
        records: one dict per (sample, system); see the module docstring.
        config: the evaluation settings to store (JSON-serialisable after Path -> str).
        checkpoint_hash: SHA-256 of the evaluated checkpoint (``sama.files.sha256_file``), or None.
        notices: human-readable lines about skipped metrics or degraded settings.
        directions: ``{metric: higher_is_better}``; defaults to the metrics and judge scores
            this package defines. Unknown metrics get ``null``.

    Raises:
        ValueError: a record lacks ``id``, or an (id, system) pair appears twice.
    """
    samples = [_normalize_record(r, i) for i, r in enumerate(records)]
    seen: set[tuple[str, str]] = set()
    for sample in samples:
        key = (sample["id"], sample["system"])
        if key in seen:
            raise ValueError(f"record for sample {key[0]!r}, system {key[1]!r} appears twice")
        seen.add(key)
    metric_names = sorted({name for s in samples for name in s["metrics"]})
    directions = dict(directions) if directions is not None else default_directions()
    systems = _system_order(s["system"] for s in samples)
    categories = sorted({s["category"] for s in samples})

    overall = {
        system: _summarize([s for s in samples if s["system"] == system], metric_names)
        for system in systems
    }
    per_category = {
        category: {
            system: _summarize(
                [s for s in samples if s["system"] == system and s["category"] == category],
                metric_names,
            )
            for system in systems
        }
        for category in categories
    }
    results = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sama_version": __version__,
        "checkpoint_sha256": checkpoint_hash,
        "config": _jsonable(config),
        "notices": list(notices),
        "systems": systems,
        "baselines": {s: BASELINE_SYSTEMS[s] for s in systems if s in BASELINE_SYSTEMS},
        "metrics": {name: {"higher_is_better": directions.get(name)} for name in metric_names},
        "categories": categories,
        "overall": overall,
        "per_category": per_category,
        "samples": samples,
    }
    path = Path(out_dir) / RESULTS_FILENAME
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False) + "\n")
    return path


class ResultsLog:
    """Append-only per-sample log (``out_dir/results.partial.jsonl``) for resumable runs.

    Each finished record is written as one JSON line and flushed to disk, so an interrupted
    run loses at most the sample in progress; ``done_ids`` tells the next run what to skip.
    A torn last line (a crash mid-write) is dropped when the log is opened.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / PARTIAL_FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one finished record (needs ``id``; ``system`` defaults to ``"model"``)."""
        if "id" not in record:
            raise ValueError("ResultsLog.append: the record has no 'id'")
        line = json.dumps(_jsonable(dict(record)), allow_nan=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def discard(self, sample_id: str, system: str = "model") -> None:
        """Withdraw the record of ``(sample_id, system)`` (a tombstone line; the log stays
        append-only): :meth:`records` no longer returns it."""
        self.append({"id": sample_id, "system": system, DISCARDED_KEY: True})

    def records(self) -> list[dict[str, Any]]:
        """The current record of each ``(id, system)`` logged so far, in the order they were
        last written: a record appended again (re-scored) replaces the earlier one, and a
        :meth:`discard` withdraws it."""
        if not self.path.exists():
            return []
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                record = json.loads(line)
                key = (str(record["id"]), record.get("system") or "model")
                latest.pop(key, None)  # a replacement moves to the end
                if not record.get(DISCARDED_KEY):
                    latest[key] = record
        return list(latest.values())

    def done_ids(self, system: str | None = None) -> set[str]:
        """Ids already logged (for ``system`` only when given; records default to ``"model"``)."""
        return {
            str(r["id"])
            for r in self.records()
            if system is None or (r.get("system") or "model") == system
        }
