"""benchmarks/real_editor_bar.py: the real-footage editor's bar from a results.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "real_editor_bar", ROOT / "benchmarks" / "real_editor_bar.py"
)
real_editor_bar = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_editor_bar)


def _sample(system: str, category: str, edit: float, kept: float | None) -> dict[str, Any]:
    return {
        "system": system,
        "category": category,
        "metrics": {"edit_region_psnr": edit, "preservation_psnr": kept},
    }


def _results(global_edit: float, kept: float) -> dict[str, Any]:
    return {
        "config": {"name": "real-footage-heldout", "samples": 4, "steps": 20},
        "samples": [
            _sample("model", "style", global_edit, None),
            _sample("identity", "style", 18.0, None),
            _sample("model", "tone", global_edit + 2.0, None),
            _sample("identity", "tone", 20.0, None),
            _sample("model", "recolor", 14.0, kept),
            _sample("identity", "recolor", 9.0, 100.0),
            _sample("model", "add", 11.0, kept + 2.0),
            _sample("identity", "add", 8.0, 100.0),
        ],
    }


def test_bar_averages_global_gain_and_local_preservation() -> None:
    figures = real_editor_bar.bar(_results(global_edit=24.0, kept=24.0))
    # global: model (24 + 26) / 2 = 25 against identity (18 + 20) / 2 = 19: +6, the bar exactly
    assert figures["global_clips"] == 2 and figures["global_gain"] == pytest.approx(6.0)
    assert figures["global_ok"]
    # local: model preservation (24 + 26) / 2 = 25; identity's 100 never counts
    assert figures["local_clips"] == 2 and figures["local_preservation"] == pytest.approx(25.0)
    assert figures["local_ok"]
    short = real_editor_bar.bar(_results(global_edit=23.9, kept=22.0))
    assert not short["global_ok"] and not short["local_ok"]


def test_report_lists_the_bar_and_each_category() -> None:
    text = real_editor_bar.report(_results(global_edit=20.0, kept=30.0))
    assert "| global edits: edit-region PSNR | 2 | 21.00 | 19.00 | **+2.00** | +6 | no |" in text
    assert "| local edits: preservation PSNR | 2 | **31.00** | 100 | | 25 | yes |" in text
    assert "| style | 1 | 20.00 | 18.00 | - |" in text
    assert "| recolor | 1 | 14.00 | 9.00 | 30.00 |" in text
    assert "| remove |" not in text  # no clips of it


def test_results_without_global_edits_are_refused(tmp_path: Path) -> None:
    results = _results(global_edit=20.0, kept=30.0)
    results["samples"] = [s for s in results["samples"] if s["category"] not in ("style", "tone")]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="global .*style, tone"):
        real_editor_bar.main([f"--results={path}"])
