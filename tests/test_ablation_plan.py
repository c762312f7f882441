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


def _row(value: float) -> dict:
    metrics = dict.fromkeys(ablation.METRICS, value)
    return {**metrics, "identity": metrics, "per_category": {"add": metrics}, "wall_s": 1.0}


def test_committed_rows_are_reused_only_with_the_same_settings(tmp_path, monkeypatch) -> None:
    results = tmp_path / "results.md"
    argv = ["--designs", "a", "--variants", "baseline", "sa", "--seeds", "0", "1"]
    argv += ["--results", str(results), "--out", str(tmp_path / "runs")]
    trained = []

    def fake_run(variant, seed, args, design="a", pairs=None):
        trained.append((variant, seed))
        return _row(10.0 + seed)

    monkeypatch.setattr(ablation, "run_one", fake_run)
    assert ablation.main(argv) == 0
    assert sorted(trained) == [("baseline", 0), ("baseline", 1), ("sa", 0), ("sa", 1)]
    rows = json.loads((tmp_path / "results-ablation-a.json").read_text())
    assert {r["settings"]["sft_steps"] for r in rows} == {500}

    trained.clear()  # same settings, run folder gone: nothing is trained again
    assert ablation.main([*argv[:-1], str(tmp_path / "elsewhere")]) == 0
    assert trained == []
    assert "| baseline | 2 | 10.50 ± 0.71" in results.read_text()  # both seeds, from the JSON

    trained.clear()  # another budget is another run
    assert ablation.main([*argv, "--sft-steps", "100"]) == 0
    assert len(trained) == 4


def test_broken_per_run_file_names_itself(tmp_path) -> None:
    (tmp_path / "results-ablation-a.json").write_text("{not json")
    with pytest.raises(SystemExit, match="results-ablation-a.json is not valid JSON"):
        ablation.main(["--designs", "a", "--results", str(tmp_path / "results.md")])


def test_rows_another_process_recorded_meanwhile_stay(tmp_path, monkeypatch) -> None:
    results = tmp_path / "results.md"
    runs_file = tmp_path / "results-ablation-a.json"
    argv = ["--designs", "a", "--variants", "baseline", "--seeds", "0", "1"]
    argv += ["--results", str(results), "--out", str(tmp_path / "runs")]
    trained = []

    def run_while_another_process_records_seed1(variant, seed, args, design="a", pairs=None):
        trained.append(seed)
        other = {"design": "a", "pairs": None, "variant": "baseline", "seed": 1}
        other |= {"settings": ablation.settings(args), **_row(12.0)}
        runs_file.write_text(json.dumps([other]))
        return _row(10.0)

    monkeypatch.setattr(ablation, "run_one", run_while_another_process_records_seed1)
    assert ablation.main(argv) == 0
    assert trained == [0]  # seed 1 was taken from the other process's row
    rows = {r["seed"]: r for r in json.loads(runs_file.read_text())}
    assert sorted(rows) == [0, 1] and rows[1]["edit_region_psnr"] == 12.0


def test_a_stage_another_process_trains_is_waited_for_not_trained_twice(
    tmp_path, monkeypatch
) -> None:
    import subprocess
    import threading

    monkeypatch.setattr(ablation, "POLL_S", 0.05)
    trained = []
    monkeypatch.setattr(ablation, "_train_stage", lambda *a: trained.append(a[0]["key"]))
    stage = ablation.plan("sa_ma", 300, 300)[0]
    args = ablation.argparse.Namespace(out=str(tmp_path))
    run = tmp_path / stage["key"] / "seed0"
    other = subprocess.Popen(["sleep", "30"])  # the "other process" holding the stage
    try:
        run.mkdir(parents=True)
        (run / "stage.lock").write_text(f"{ablation.platform.node()}:{other.pid}")
        worker = threading.Thread(target=ablation._run_stage, args=(stage, 0, None, args))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and trained == []  # waiting while the holder lives
    finally:
        other.kill()
        other.wait()
    worker.join(5)
    assert not worker.is_alive() and trained == [stage["key"]]
    assert not (run / "stage.lock").exists()


def test_report_only_trains_nothing_and_says_what_is_missing(tmp_path, monkeypatch, capsys) -> None:
    results = tmp_path / "results.md"
    argv = ["--designs", "a", "--variants", "baseline", "sa", "--seeds", "0"]
    argv += ["--results", str(results), "--out", str(tmp_path / "runs")]
    monkeypatch.setattr(ablation, "run_one", lambda *a, **k: _row(10.0))
    assert ablation.main([*argv[:4], *argv[5:]]) == 0  # records baseline only
    monkeypatch.setattr(ablation, "run_one", lambda *a, **k: pytest.fail("trained in --report"))
    assert ablation.main([*argv, "--report"]) == 0
    assert "1 recorded run(s); 1 not run yet" in capsys.readouterr().out
    assert "| baseline | 1 | 10.00 ± 0.00" in results.read_text()
