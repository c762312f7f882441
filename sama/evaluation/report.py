"""Evaluation outputs: ``results.json``, a self-contained ``report.html``, and a resumable log.

A *record* is one evaluated sample of one system::

    {"id": "0007", "category": "swap", "system": "model",      # system defaults to "model"
     "instruction": "make the car red",                        # optional
     "metrics": {"psnr": 27.1, "warp_error": 0.012, ...},      # None / NaN = not measured
     "paths": {"source": "...", "edit": "...", "target": "..."}}

Systems other than ``"model"`` are baselines scored on the same samples: ``"identity"``
(edit = source) is the floor for editing metrics and the ceiling for preservation;
``"oracle"`` (edit = target) is the ceiling for ground-truth metrics. The report shows all
systems side by side. See docs/evaluation.md for the ``results.json`` schema.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import io
import json
import math
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sama import __version__

SCHEMA_VERSION = 1
RESULTS_FILENAME = "results.json"
REPORT_FILENAME = "report.html"
PARTIAL_FILENAME = "results.partial.jsonl"

BASELINE_SYSTEMS = {
    "identity": "edit = source (no edit): floor for editing metrics, ceiling for preservation",
    "oracle": "edit = target (ground truth): ceiling for the ground-truth metrics",
}
"""Known baseline systems and what they bound."""


# ----------------------------------------------------------------------------- images


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 image ``(H, W, 3)`` (RGB) or ``(H, W)`` (gray) as PNG bytes."""
    image = np.asarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(
            f"encode_png needs uint8 (H, W, 3) or (H, W); got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    color_type = 2 if image.ndim == 3 else 0
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W, 3)`` image as a PNG file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))
    return path


def frame_strip(video: np.ndarray, n: int = 4, gap: int = 2) -> np.ndarray:
    """``n`` frames of a uint8 video ``(T, H, W, 3)``, evenly spaced, side by side.

    Returns uint8 ``(H, n' * W + (n' - 1) * gap, 3)`` with ``n' = min(n, T)`` and white gaps.
    """
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frame_strip needs uint8 (T, H, W, 3); got {video.dtype} {video.shape}")
    if n < 1:
        raise ValueError(f"frame_strip needs n >= 1; got {n}")
    total, height = video.shape[0], video.shape[1]
    count = min(n, total)
    indices = [round(i * (total - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for k, index in enumerate(indices):
        if k:
            parts.append(spacer)
        parts.append(video[index])
    return np.concatenate(parts, axis=1)


def edit_overview(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    frames: int = 3,
    scale: int = 4,
) -> np.ndarray:
    """One picture of edits: a header line, then per row a caption line and
    ``source | edit | target`` strips.

    Each row is ``(caption, source, edit, target)`` with uint8 videos ``(T, H, W, 3)`` of one
    size (``target`` may be ``None``: its panel stays white). Strips show ``frames`` evenly
    spaced frames, nearest-neighbour upscaled ``scale`` times. Returns uint8 ``(H', W', 3)``.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("edit_overview needs at least one row")
    gap, text_h = 8, 14
    panels: list[np.ndarray] = []
    for caption, source, edit, target in rows:
        strips = [frame_strip(v, frames) for v in (source, edit)]
        strips.append(
            frame_strip(target, frames) if target is not None else np.full_like(strips[0], 255)
        )
        if len({s.shape for s in strips}) != 1:
            raise ValueError(f"edit_overview: row {caption!r} has videos of different sizes")
        spacer = np.full((strips[0].shape[0], gap // 2, 3), 255, np.uint8)
        row = np.concatenate([strips[0], spacer, strips[1], spacer, strips[2]], axis=1)
        row = row.repeat(scale, axis=0).repeat(scale, axis=1)
        band = Image.new("RGB", (row.shape[1], text_h), "white")
        ImageDraw.Draw(band).text((2, 1), caption, fill=(0, 0, 0))
        panels += [np.asarray(band), row, np.full((gap, row.shape[1], 3), 255, np.uint8)]
    strip_w = (panels[1].shape[1] - gap * scale) // 3  # panels[1]: the first row's strips
    header = Image.new("RGB", (panels[1].shape[1], text_h), "white")
    for k, name in enumerate(("source", "edit", "target")):
        ImageDraw.Draw(header).text((2 + k * (strip_w + gap // 2 * scale), 1), name, fill=(0, 0, 0))
    panels.insert(0, np.asarray(header))
    width = max(p.shape[1] for p in panels)
    padded = [
        np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels
    ]
    return np.concatenate(padded, axis=0)


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be tens of GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- records


def verify_checksums(directory: str | Path, sums_file: str = "SHA256SUMS") -> list[str]:
    """Check every ``<sha256>  <name>`` line of ``directory/sums_file``; returns the names.

    Raises ``ValueError`` naming the first missing or changed file (and what to do).
    """
    directory = Path(directory)
    listing = directory / sums_file
    if not listing.is_file():
        raise ValueError(f"{listing}: no checksum list; re-export the weights")
    names = []
    for line_no, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ValueError(f"{listing}:{line_no}: expected '<sha256>  <file name>'")
        path = directory / name
        if not path.is_file():
            raise ValueError(
                f"{path}: listed in {sums_file} but missing; restore it (git checkout)"
            )
        if sha256_file(path) != digest:
            raise ValueError(
                f"{path}: checksum differs from {sums_file}; restore it (git checkout) or re-export"
            )
        names.append(name)
    return names


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


def _default_directions() -> dict[str, bool]:
    from sama.evaluation.judge import JUDGE_METRIC_NAMES
    from sama.evaluation.metrics import metric_directions

    directions = metric_directions()
    directions.update(dict.fromkeys(JUDGE_METRIC_NAMES, True))
    return directions


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        checkpoint_hash: SHA-256 of the evaluated checkpoint (``sha256_file``), or None.
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
    directions = dict(directions) if directions is not None else _default_directions()
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
    _atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False) + "\n")
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

    def records(self) -> list[dict[str, Any]]:
        """Every record logged so far, in order."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def done_ids(self, system: str | None = None) -> set[str]:
        """Ids already logged (for ``system`` only when given; records default to ``"model"``)."""
        return {
            str(r["id"])
            for r in self.records()
            if system is None or (r.get("system") or "model") == system
        }


# ----------------------------------------------------------------------------- report


def _fmt(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _arrow(higher: bool | None) -> str:
    if higher is None:
        return ""
    return " &uarr;" if higher else " &darr;"


def _table(summaries: Mapping[str, Any], systems: list[str], metrics: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    rows = [
        "<tr><td>samples</td>"
        + "".join(f"<td>{summaries[s]['count']}</td>" for s in systems)
        + "</tr>"
    ]
    for name, info in metrics.items():
        cells = []
        for system in systems:
            entry = summaries[system]["metrics"].get(name, {"mean": None, "count": 0})
            cells.append(f"<td>{_fmt(entry['mean'])} <span class=n>({entry['count']})</span></td>")
        label = html.escape(name) + _arrow(info.get("higher_is_better"))
        rows.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _bar_plots(results: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """One grouped bar chart per metric (categories on x, one bar per system), as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    systems = results["systems"]
    groups = ["overall", *results["categories"]]
    plots = []
    for name, info in results["metrics"].items():
        figure = Figure(
            figsize=(min(14.0, max(4.0, 0.9 * len(groups) * len(systems))), 2.6), dpi=90
        )
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        width = 0.8 / len(systems)
        for k, system in enumerate(systems):
            heights = []
            for group in groups:
                summary = (
                    results["overall"][system]
                    if group == "overall"
                    else results["per_category"][group][system]
                )
                mean = summary["metrics"][name]["mean"]
                heights.append(math.nan if mean is None else mean)
            positions = [g + (k - (len(systems) - 1) / 2) * width for g in range(len(groups))]
            axes.bar(positions, heights, width=width, label=system)
        axes.set_xticks(range(len(groups)), groups, fontsize=8)
        direction = {True: " (higher is better)", False: " (lower is better)"}
        axes.set_title(name + direction.get(info.get("higher_is_better"), ""), fontsize=9)
        axes.tick_params(axis="y", labelsize=8)
        axes.legend(fontsize=7)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plots.append((name, buffer.getvalue()))
    return plots


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
th{background:#f0f0f0}.n{color:#888;font-size:80%}
.notices{background:#fff4ce;border:2px solid #e0a800;padding:0.6em 1em;margin:1em 0}
.sample{border-top:1px solid #ddd;padding:0.8em 0}
figure{display:inline-block;margin:0.3em 1em 0.3em 0}
figure img{max-width:100%;image-rendering:pixelated}
figcaption{font-size:85%;color:#555}
img.plot{margin:0.3em;border:1px solid #eee}
"""


def write_report(
    out_dir: str | Path,
    results_path: str | Path,
    *,
    thumbnails: Mapping[str, Mapping[str, str | Path]] | None = None,
    max_samples: int = 16,
) -> Path:
    """Write a self-contained ``out_dir/report.html`` from a ``results.json``.

    Everything is inlined (images as base64 data URIs, no external resources), so the file can
    be mailed or attached as a CI artefact.

    Args:
        results_path: the file written by ``write_results``.
        thumbnails: ``{sample id: {role: png path}}``, e.g. roles ``source`` / ``edit`` /
            ``target``, each a ``frame_strip`` PNG; shown for up to ``max_samples`` samples.
    """
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    systems: list[str] = results["systems"]
    metrics: dict[str, Any] = results["metrics"]
    notices = list(results.get("notices", []))
    parts: list[str] = []

    try:
        plots = _bar_plots(results) if metrics and systems else []
    except ImportError:
        plots = []
        notices.append("plots skipped: matplotlib is missing (pip install 'sama-edit[eval]')")

    parts.append("<h1>sama-edit evaluation</h1>")
    meta = [
        f"created {html.escape(str(results.get('created')))}",
        f"sama {html.escape(str(results.get('sama_version')))}",
        f"checkpoint sha256 <code>{html.escape(str(results.get('checkpoint_sha256')))}</code>",
    ]
    parts.append(f"<p>{' &middot; '.join(meta)}</p>")
    if notices:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notices)
        parts.append(f"<div class=notices><b>Notices</b><ul>{items}</ul></div>")
    if results.get("baselines"):
        items = "".join(
            f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
            for k, v in results["baselines"].items()
        )
        parts.append(f"<p>Baselines shown beside the model:</p><ul>{items}</ul>")

    parts.append("<h2>Overall</h2><p>mean (number of samples measured)</p>")
    parts.append(_table(results["overall"], systems, metrics))
    parts.append("<h2>Per category</h2>")
    for category in results["categories"]:
        parts.append(f"<h3>{html.escape(category)}</h3>")
        parts.append(_table(results["per_category"][category], systems, metrics))

    if plots:
        parts.append("<h2>Plots</h2>")
        for name, png in plots:
            parts.append(f'<img class=plot alt="{html.escape(name)}" src="{_data_uri(png)}">')

    parts.append(_samples_section(results, thumbnails or {}, max_samples))
    config = html.escape(json.dumps(results.get("config", {}), indent=2))
    parts.append(f"<h2>Config</h2><details><summary>show</summary><pre>{config}</pre></details>")

    page = (
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>sama-edit evaluation</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    path = Path(out_dir) / REPORT_FILENAME
    _atomic_write_text(path, page)
    return path


def _samples_section(
    results: Mapping[str, Any],
    thumbnails: Mapping[str, Mapping[str, str | Path]],
    max_samples: int,
) -> str:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for sample in results["samples"]:
        by_id.setdefault(sample["id"], []).append(sample)
    shown = [i for i in by_id if i in thumbnails][:max_samples] if thumbnails else []
    if not shown:
        return ""
    parts = [f"<h2>Samples</h2><p>{len(shown)} of {len(by_id)} samples</p>"]
    for sample_id in shown:
        records = by_id[sample_id]
        first = records[0]
        title = f"{html.escape(sample_id)} &middot; {html.escape(first['category'])}"
        instruction = first.get("instruction")
        if instruction:
            title += f" &middot; <i>{html.escape(str(instruction))}</i>"
        parts.append(f"<div class=sample><h4>{title}</h4>")
        for role, png_path in thumbnails[sample_id].items():
            uri = _data_uri(Path(png_path).read_bytes())
            parts.append(
                f'<figure><img alt="{html.escape(role)}" src="{uri}">'
                f"<figcaption>{html.escape(role)}</figcaption></figure>"
            )
        values = " &middot; ".join(
            f"{html.escape(r['system'])}: "
            + ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in r["metrics"].items())
            for r in records
        )
        parts.append(f"<p class=n>{values}</p></div>")
    return "".join(parts)
