"""benchmarks/ablation.py's run plan: the three designs, shared runs and limited pairs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)


def _steps(stages: list[dict]) -> list[int]:
    return [stage["steps"] for stage in stages]


def test_compute_matched_design_gives_every_variant_the_same_total() -> None:
    for variant in ablation.VARIANTS:
        assert sum(_steps(ablation.plan(variant, 500, 500, "a"))) == 1000, variant


def test_paper_design_adds_stage0_before_a_fixed_sft_budget() -> None:
    for variant in ablation.VARIANTS:
        stages = ablation.plan(variant, 500, 500, "b", fixed_sft=1000)
        if variant == "zero_shot":
            assert [s["name"] for s in stages] == ["pretrain"] and _steps(stages) == [500]
        else:
            assert stages[-1]["name"] == "sft" and stages[-1]["steps"] == 1000, variant
            assert len(stages) == (1 if variant in ("baseline", "sa") else 2), variant


def test_designs_share_identical_runs_and_only_those() -> None:
    a = {v: ablation.plan(v, 500, 500, "a") for v in ablation.VARIANTS}
    b = {v: ablation.plan(v, 500, 500, "b") for v in ablation.VARIANTS}  # SFT budget 1000
    assert a["baseline"][0]["key"] == b["baseline"][0]["key"]  # SFT-only for 1000 in both
    assert a["sa_ma"][0]["key"] == b["sa_ma"][0]["key"]  # the same 500-step stage 0
    assert a["sa_ma"][1]["key"] != b["sa_ma"][1]["key"]  # SFT 500 vs 1000 steps
    assert b["zero_shot"][0]["key"] == b["sa_ma"][0]["key"]  # zero-shot is that stage 0
    assert a["zero_shot"][0]["key"] != a["sa_ma"][0]["key"]  # (a): stage 0 for 1000 steps
    keys = [stage["key"] for stages in a.values() for stage in stages]
    assert len(set(keys)) == len(keys)  # no two stages of one design collide


def test_data_limited_design_limits_only_the_video_pairs() -> None:
    stages = ablation.plan("sa_ma", 500, 500, "c", pairs=64)
    (override,) = [o for o in stages[-1]["overrides"] if o.startswith("--data.")]
    streams = json.loads(override.split("=", 1)[1])
    assert [s["init_args"]["num"] for s in streams] == [64]
    assert streams[0]["class_path"] == "datamodules.SynthEditPairs"
    assert "n64" in stages[-1]["key"]
    assert stages[0]["key"] == ablation.plan("sa_ma", 500, 500, "b")[0]["key"]  # stage 0 shared
    assert not any(o.startswith("--data.") for o in stages[0]["overrides"])
    with pytest.raises(ValueError, match="number of pairs"):
        ablation.plan("sa_ma", 500, 500, "c")
    with pytest.raises(ValueError, match="unknown design"):
        ablation.plan("sa_ma", 500, 500, "d")
