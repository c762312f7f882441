"""The self-contained ``report.html`` of an evaluation, rendered from its ``results.json``.

Tables (overall and per category, every system side by side), one bar chart per metric
(matplotlib, optional), thumbnails of the first samples, and the notices; images are inlined
as base64 data URIs, so the file can be mailed or attached as a CI artefact.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sama.files import atomic_write_text

__all__ = ["REPORT_FILENAME", "write_report"]

REPORT_FILENAME = "report.html"


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
    atomic_write_text(path, page)
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
