"""The factorization ablation at tiny scale: does factorized pre-training help editing?

Variants (stage 0 = the pretext tasks on unpaired clips; SA = Semantic Anchoring):

| variant      | stage 0                                        | stage 1        |
|--------------|------------------------------------------------|----------------|
| baseline     | -                                              | SFT, lambda = 0 |
| sa           | -                                              | SFT + SA       |
| ma           | pretext tasks, lambda = 0                      | SFT, lambda = 0 |
| sa_ma        | pretext tasks + SA (the full recipe)           | SFT + SA       |
| cube / speed / tube | that one pretext task + SA              | SFT + SA       |
| zero_shot    | pretext tasks + SA                             | none           |

Three designs (``--designs a b c``):

- (a) compute-matched: every variant trains ``P + S`` optimizer steps in all (stage 0 ``P``
  then SFT ``S``; single-stage variants SFT ``P + S``);
- (b) the paper's: every variant gets the same SFT budget (``--fixed-sft-steps``, default
  ``P + S``), and the two-stage variants add a stage 0 of ``P`` steps before it;
- (c) data-limited: as (b), with SFT on only ``N`` video edit pairs (``--pairs``, small to
  large) while raw clips and image pairs stay plentiful: the regime the factorization is for.

Runs that are the same in two designs (same tasks, steps, data, initialisation and seed) are
trained once: each stage's folder under ``--out`` is named by what it trains. Each run is
scored with ``sama test`` on SynthEdit's held-out split (overall and per category, including
motion EPE, warp error and the EfficientNet feature metrics); each design's tables (mean +-
std over seeds, differences paired by seed) go to ``docs/results.md`` between its marker
lines, and design (c)'s plot of quality against ``N`` to ``docs/images/ablation-pairs.png``.
Every run resumes from its ``last.ckpt`` and finished runs and benchmarks are skipped, so the
ablation can be spread over sittings (keep ``--out`` outside the checkout). Each finished run's
row also goes to ``docs/results-ablation-<design>.json`` with the settings it was measured
with; a later invocation with the same settings takes those rows as done, so committing the
tables and their JSON keeps the finished runs even where ``--out`` is lost; ``--report``
rewrites the tables from the recorded runs without training anything::

    python benchmarks/ablation.py --designs a b c --pretrain-steps 500 --sft-steps 500 \\
        --seeds 0 1 2 --out /work/state/ablation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sama.files import atomic_write_text
from sama.train_tiny import steps_done

ROOT = Path(__file__).resolve().parents[1]
PRETEXT = {
    "reconstruction": ("tasks.Reconstruction", 1),
    "cube": ("tasks.CubeInpainting", 2),
    "speed": ("tasks.SpeedPerturbation", 3),
    "tube": ("tasks.TubeShuffle", 4),
}
SA_TASK = {"class_path": "tasks.SemanticAnchoring", "init_args": {"weight": 2}}
VARIANTS = ["baseline", "sa", "ma", "sa_ma", "cube", "speed", "tube", "zero_shot"]
METRICS = [
    "edit_region_psnr",
    "preservation_psnr",
    "psnr",
    "ssim",
    "motion_epe",
    "warp_error",
    "effnet_frame",
    "effnet_preservation",
]
MOTION_CATEGORIES = ("add", "replace")
"""Categories with added or replaced moving objects: their motion EPE against the target and
warp error are the motion-sensitive figures."""
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
POLL_S = 30.0
"""Seconds between looks at a run or stage another process holds."""


def _tasks(names: list[str], with_sa: bool) -> str:
    tasks = [{"class_path": PRETEXT[n][0], "init_args": {"weight": PRETEXT[n][1]}} for n in names]
    return json.dumps(tasks + ([SA_TASK] if with_sa else []))


DESIGNS = ("a", "b", "c")
"""(a) compute-matched: every variant trains ``P + S`` steps in all; (b) the paper's: stage 0
(``P`` steps) is added before a fixed SFT budget of ``S`` steps; (c) data-limited: as (b), with
SFT on only ``N`` video edit pairs (raw clips and image pairs stay plentiful)."""


def _limited_pairs(num: int) -> str:
    """The SFT config's ``video_pairs`` streams (JSON) with ``num`` pairs each."""
    import yaml

    data = yaml.safe_load((ROOT / "configs/ablation/sft.yaml").read_text())["data"]["init_args"]
    streams = [dict(stream) for stream in data["video_pairs"]]
    for stream in streams:
        stream["init_args"] = {**stream.get("init_args", {}), "num": int(num)}
    return json.dumps(streams)


def _stage0(key: str, steps: int) -> dict:
    """Stage 0 with the pretext tasks ``key`` names (``all``/``all_nosa``/one task)."""
    all_pretext = ["reconstruction", "cube", "speed", "tube"]
    names = all_pretext if key in ("all", "all_nosa") else [key]
    overrides = [f"--model.tasks={_tasks(names, key != 'all_nosa')}"]
    if key == "all_nosa":
        overrides.append("--model.semantic_weight=0")
    return {
        "name": "pretrain",
        "key": f"stage0/{key}/p{steps}",
        "config": "configs/ablation/pretrain.yaml",
        "steps": steps,
        "overrides": overrides,
    }


def plan(
    variant: str,
    p: int,
    s: int,
    design: str = "a",
    pairs: int | None = None,
    fixed_sft: int | None = None,
) -> list[dict]:
    """The stages of one variant: ``[{"name", "key", "config", "steps", "overrides"}]``.

    Design (a) trains stage 0 for ``p`` and SFT for ``s`` steps (single-stage variants
    ``p + s``); designs (b) and (c) train SFT for ``fixed_sft`` steps (default ``p + s``, so
    that their SFT-only variants are (a)'s), after a stage 0 of ``p`` steps.

    ``key`` names the stage's run folder under ``--out``: a stage trained with the same tasks,
    steps, data and initialisation has the same key in every design, so designs share runs
    (e.g. (b)'s stage-0 runs are (a)'s, and (b)'s baseline is (a)'s when ``S_b = P_a + S_a``).
    """
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {DESIGNS}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    if (design == "c") != (pairs is not None):
        raise ValueError("design c needs a number of pairs; designs a and b use all pairs")
    if design != "a":  # (b), (c): `s` is the fixed SFT budget of every variant
        s = fixed_sft if fixed_sft is not None else p + s
    single = p + s if design == "a" else s  # the budget of the single-stage variants
    if variant == "zero_shot":
        return [_stage0("all", p + s if design == "a" else p)]
    no_sa = ["--model.semantic_weight=0"]
    data = [] if pairs is None else [f"--data.init_args.video_pairs={_limited_pairs(pairs)}"]
    tag = f"n{pairs}" if pairs is not None else "nall"

    def sft(steps: int, overrides: list[str], init: str) -> dict:
        return {
            "name": "sft",
            "key": f"sft/{variant}/{init}/s{steps}/{tag}",
            "config": "configs/ablation/sft.yaml",
            "steps": steps,
            "overrides": [*overrides, *data],
        }

    if variant == "baseline":
        return [sft(single, no_sa, "scratch")]
    if variant == "sa":
        return [sft(single, [], "scratch")]
    key = {"ma": "all_nosa", "sa_ma": "all"}.get(variant, variant)
    stage0 = _stage0(key, p)
    return [stage0, sft(s, no_sa if variant == "ma" else [], stage0["key"].replace("/", "-"))]


def _clip_shape(config: str) -> tuple[list[int], int]:
    """``(size, frames)`` of the clips a config trains on, so the benchmark matches them."""
    import yaml

    data = yaml.safe_load((ROOT / config).read_text())["data"]["init_args"]
    for key in ("video_pairs", "clips"):
        for source in data.get(key) or []:
            init = source.get("init_args", {})
            if "size" in init and "frames" in init:
                return list(init["size"]), int(init["frames"])
    raise SystemExit(f"ablation: {config} names no clip size/frames under data.init_args")


def _acquire(lock: Path) -> bool:
    """Take ``lock`` (a file holding ``host:pid``); a lock left by a dead process on this host
    is taken over. Returns False while another live process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{platform.node()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            host, _, pid = lock.read_text().partition(":")
            if host != platform.node() or not pid.isdigit():
                return False
            try:
                os.kill(int(pid), 0)
                return False
            except ProcessLookupError:
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        return True
    return False


def _sama(args: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    print("$ sama " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "sama", *args], cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"ablation: `sama {args[0]}` failed (exit {done.returncode})")
    return time.monotonic() - start


def _run_stage(stage: dict, seed: int, previous: Path | None, args: argparse.Namespace) -> Path:
    """Train (resuming) one stage in ``--out/<key>/seed<seed>``; returns its ``last.ckpt``."""
    run = Path(args.out) / stage["key"] / f"seed{seed}"
    ckpt = run / stage["name"] / "checkpoints" / "last.ckpt"
    if steps_done(ckpt) >= stage["steps"]:
        return ckpt
    # a stage 0 is shared by several variants' runs: another process may be training it
    lock = run / "stage.lock"
    while not _acquire(lock):
        print(f"ablation: {run} is being trained by another process; waiting", flush=True)
        time.sleep(POLL_S)
    try:
        if steps_done(ckpt) < stage["steps"]:
            _train_stage(stage, seed, previous, args, run, ckpt)
    finally:
        lock.unlink(missing_ok=True)
    return ckpt


def _train_stage(
    stage: dict, seed: int, previous: Path | None, args: argparse.Namespace, run: Path, ckpt: Path
) -> None:
    """Run ``sama fit`` for one stage (resuming its ``last.ckpt``), adding to its wall time."""
    wall_path = run / "wall_seconds.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
    command = [
        "fit",
        f"--config={stage['config']}",
        f"--seed_everything={seed}",  # also the model's and the data's seed
        f"--trainer.max_steps={stage['steps']}",
        f"--trainer.val_check_interval={stage['steps']}",
        f"--trainer.logger.init_args.save_dir={run}",
        "--trainer.enable_progress_bar=false",
        f"--model.init_from={previous}" if previous else "--model.init_from=null",
        *args.fit_arg,
        *stage["overrides"],
    ]
    command.append(f"--ckpt_path={ckpt}" if ckpt.exists() else "--ckpt_path=last")
    wall[stage["name"]] = wall.get(stage["name"], 0.0) + _sama(command)
    run.mkdir(parents=True, exist_ok=True)
    wall_path.write_text(json.dumps(wall) + "\n")


def _wall(stage: dict, seed: int, args: argparse.Namespace) -> float:
    path = Path(args.out) / stage["key"] / f"seed{seed}" / "wall_seconds.json"
    return sum(json.loads(path.read_text()).values()) if path.exists() else 0.0


def run_one(
    variant: str, seed: int, args: argparse.Namespace, design: str = "a", pairs: int | None = None
) -> dict:
    """Train (resuming) and benchmark one run; returns the model's overall and per-category
    means, the identity baseline's, and the training wall time of its stages."""
    stages = plan(variant, args.pretrain_steps, args.sft_steps, design, pairs, args.fixed_sft_steps)
    previous = None
    for stage in stages:
        previous = _run_stage(stage, seed, previous, args)
    bench = Path(args.out) / stages[-1]["key"] / f"seed{seed}" / "bench"
    size, frames = _clip_shape(stages[-1]["config"])
    if not (bench / "results.json").exists():
        _sama(
            [
                "test",
                "--config=configs/eval/synthedit.yaml",
                f"--ckpt_path={previous}",
                f"--data.init_args.benchmark.init_args.num={args.bench_samples}",
                f"--data.init_args.benchmark.init_args.size={json.dumps(size)}",
                f"--data.init_args.benchmark.init_args.frames={frames}",
                f"--data.init_args.output_dir={bench}",
                f"--data.init_args.sampling.steps={args.sample_steps}",
                "--trainer.enable_progress_bar=false",
            ]
        )
    results = json.loads((bench / "results.json").read_text())

    def means(block: dict) -> dict:
        return {m: block["metrics"].get(m, {}).get("mean") for m in METRICS}

    row = means(results["overall"]["model"])
    row["identity"] = means(results["overall"]["identity"])
    row["per_category"] = {c: means(v["model"]) for c, v in results["per_category"].items()}
    row["wall_s"] = sum(_wall(stage, seed, args) for stage in stages)
    return row


def _fmt(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def table(rows: dict[str, list[dict]], metrics: list[str] = METRICS) -> str:
    """Mean ± std over seeds per variant, plus the identity (source returned) row."""
    head = "| variant | seeds | " + " | ".join(metrics) + " | train wall (s, mean) |"
    lines = [head, "|" + "---|" * (len(metrics) + 3)]
    for variant, runs in rows.items():
        cells = [_fmt([r[m] for r in runs]) for m in metrics]
        wall = statistics.mean(r["wall_s"] for r in runs)
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + f" | {wall:.0f} |")
    first = next(iter(rows.values()))
    identity = [_fmt([r["identity"][m] for r in first]) for m in metrics]
    lines.append("| identity (source returned) | - | " + " | ".join(identity) + " | - |")
    return "\n".join(lines)


def paired_table(
    rows: dict[str, list[dict]], reference: str = "baseline", metrics: list[str] | None = None
) -> str:
    """Each variant minus ``reference`` on the same seed (mean ± std of the differences)."""
    metrics = metrics or ["edit_region_psnr", "preservation_psnr", "motion_epe", "effnet_frame"]
    ref = {r["seed"]: r for r in rows.get(reference, []) if "seed" in r}
    lines = [
        f"| variant - {reference} | seeds | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 2),
    ]
    for variant, runs in rows.items():
        pairs = [(r, ref[r["seed"]]) for r in runs if variant != reference and r["seed"] in ref]
        if not pairs:
            continue
        cells = [
            _fmt([a[m] - b[m] for a, b in pairs if a[m] is not None and b[m] is not None])
            for m in metrics
        ]
        lines.append(f"| {variant} | {len(pairs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def category_table(rows: dict[str, list[dict]], metric: str) -> str:
    """``metric`` per edit category (mean ± std over seeds) for every variant."""
    categories = sorted({c for runs in rows.values() for r in runs for c in r["per_category"]})
    lines = [
        f"| {metric} | " + " | ".join(categories) + " |",
        "|" + "---|" * (len(categories) + 1),
    ]
    for variant, runs in rows.items():
        cells = [_fmt([r["per_category"].get(c, {}).get(metric) for r in runs]) for c in categories]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _motion_table(rows: dict[str, list[dict]]) -> str:
    metrics = ["motion_epe", "warp_error", "edit_region_psnr"]
    head = "| variant | " + " | ".join(f"{c}: {m}" for c in MOTION_CATEGORIES for m in metrics)
    lines = [head + " |", "|" + "---|" * (len(MOTION_CATEGORIES) * len(metrics) + 1)]
    for variant, runs in rows.items():
        cells = [
            _fmt([r["per_category"].get(c, {}).get(m) for r in runs])
            for c in MOTION_CATEGORIES
            for m in metrics
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markers(design: str) -> tuple[str, str]:
    return f"<!-- ablation-{design}:begin -->", f"<!-- ablation-{design}:end -->"


_DESIGN_TEXT = {
    "a": "compute-matched: every variant trains {total} optimizer steps in all (stage 0 {p} + "
    "SFT {s}; single-stage variants SFT {total})",
    "b": "the paper's: SFT {fixed} steps for every variant, stage 0 ({p} steps) added before it "
    "(zero-shot: stage 0 only)",
    "c": "data-limited: as (b) (SFT {fixed} steps), on only N SynthEdit video pairs (N = {pairs}); "
    "raw clips and "
    "image pairs stay plentiful",
}


def design_section(
    design: str, rows: dict, args: argparse.Namespace, pairs: int | None = None
) -> str:
    """Markdown of one design (or one N of design c): overall, paired, motion and per-category
    tables."""
    title = f"Design ({design})" + (f", N = {pairs} pairs" if pairs is not None else "")
    return f"""#### {title}

{table(rows)}

Differences from the SFT-only baseline, paired by seed (the same seed sets data, task draws
and initialisation):

{paired_table(rows)}

Motion-sensitive categories (added or replaced moving objects; motion EPE against the target
and warp error, lower is better):

{_motion_table(rows)}

Edit-region PSNR per category:

{category_table(rows, "edit_region_psnr")}
"""


def write_results(
    path: Path, design: str, sections: list[str], walls: float, args: argparse.Namespace
) -> None:
    """Replace design ``design``'s block of ``path`` (between its markers), atomically."""
    begin, end = _markers(design)
    shown = [a for a in sys.argv[1:] if a not in ("--report", "--reverse")]
    command = "python benchmarks/ablation.py " + " ".join(shown)
    what = _DESIGN_TEXT[design].format(
        p=args.pretrain_steps,
        s=args.sft_steps,
        total=args.pretrain_steps + args.sft_steps,
        fixed=args.fixed_sft_steps or args.pretrain_steps + args.sft_steps,
        pairs=", ".join(str(n) for n in args.pairs),
    )
    body = f"""{begin}
Design ({design}), {what}. Measured with `{command}` on {platform.node() or "this machine"}
({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, no GPU), scored on
{args.bench_samples} SynthEdit held-out samples with {args.sample_steps} sampler steps. Mean ±
std over seeds; PSNR in dB, effnet_* are cosines (higher is better), motion EPE in pixels.
Training wall time of the runs in these tables (shared runs counted once per table):
{walls / 60:.0f} min. Per-run numbers: `{_runs_file(path, design).name}`.

{chr(10).join(sections)}
{end}"""
    text = path.read_text() if path.exists() else "# Results\n\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + body + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    atomic_write_text(path, text)


def _runs_file(path: Path, design: str) -> Path:
    return path.with_name(f"{path.stem}-ablation-{design}.json")


def settings(args: argparse.Namespace) -> dict:
    """What makes two runs of the same (design, pairs, seed, variant) the same run."""
    return {
        "pretrain_steps": args.pretrain_steps,
        "sft_steps": args.sft_steps,
        "fixed_sft_steps": args.fixed_sft_steps or args.pretrain_steps + args.sft_steps,
        "bench_samples": args.bench_samples,
        "sample_steps": args.sample_steps,
        "fit_args": list(args.fit_arg),
    }


def recorded(args: argparse.Namespace) -> dict[tuple, dict]:
    """Finished runs kept in the per-run JSON files next to ``--results`` (committed with the
    tables), keyed ``(design, pairs, seed, variant)``: only rows measured with this
    invocation's :func:`settings`. They are not trained or scored again, so the ablation
    carries on from what is committed even when ``--out`` is gone."""
    wanted, found = settings(args), {}
    for design in args.designs:
        path = _runs_file(Path(args.results), design)
        if not path.exists():
            continue
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise SystemExit(
                f"ablation: {path} is not valid JSON ({error}); fix or remove it"
            ) from None
        for row in rows:
            if row.get("settings") != wanted or "seed" not in row:
                continue
            run = {k: v for k, v in row.items() if k not in ("design", "pairs", "variant")}
            found[(design, row.get("pairs"), row["seed"], row.get("variant"))] = run
    return found


def plot_pairs(rows_by_n: dict[int, dict[str, list[dict]]], out: Path) -> None:
    """Design (c): edit-region and preservation PSNR (mean ± std over seeds) against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(rows_by_n)
    variants = sorted({v for rows in rows_by_n.values() for v in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, metric in zip(axes, ("edit_region_psnr", "preservation_psnr"), strict=True):
        for variant in variants:
            xs, ys, es = [], [], []
            for n in counts:
                values = [r[metric] for r in rows_by_n[n].get(variant, []) if r[metric] is not None]
                if values:
                    xs.append(n)
                    ys.append(statistics.mean(values))
                    es.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            if xs:
                axis.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=variant)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("SFT video edit pairs (N)")
        axis.set_ylabel(f"{metric} (dB)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Ablation design (c): quality against the number of paired edits")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)


def _jobs(args: argparse.Namespace) -> list[tuple[str, int | None, int, str]]:
    """Every (design, pairs, seed, variant) to run, seed-major within each design so that a
    sitting that stops early leaves every variant compared on the seeds finished so far."""
    jobs = []
    for design in args.designs:
        for pairs in args.pairs if design == "c" else [None]:
            for seed in args.seeds:
                for variant in args.variants:
                    if design == "c" and variant == "zero_shot" and pairs != args.pairs[0]:
                        continue  # zero-shot sees no pairs: one row, shown with the first N
                    jobs.append((design, pairs, seed, variant))
    return jobs


def report(results: dict, args: argparse.Namespace) -> None:
    """Rewrite each design's block of ``--results``, its per-run JSON and design (c)'s plot."""
    path = Path(args.results)
    for design in args.designs:
        counts = args.pairs if design == "c" else [None]
        sections, by_n, walls, per_run = [], {}, 0.0, []
        for pairs in counts:
            rows = {}
            for variant in args.variants:
                key_pairs = args.pairs[0] if design == "c" and variant == "zero_shot" else pairs
                runs = [
                    results[(design, key_pairs, s, variant)]
                    for s in args.seeds
                    if (design, key_pairs, s, variant) in results
                ]
                if runs:
                    rows[variant] = runs
            if not rows:
                continue
            by_n[pairs] = rows
            sections.append(design_section(design, rows, args, pairs))
            walls += sum(r["wall_s"] for runs in rows.values() for r in runs)
            per_run += [
                {"design": design, "pairs": pairs, "variant": v, **r}
                for v, rs in rows.items()
                for r in rs
            ]
        if not sections:
            continue
        write_results(path, design, sections, walls, args)
        atomic_write_text(_runs_file(path, design), json.dumps(per_run, indent=1) + "\n")
        if design == "c" and len(by_n) > 1:
            plot_pairs(by_n, Path(args.plot))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--designs", nargs="+", default=["a"], choices=DESIGNS)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--sft-steps", type=int, default=500)
    parser.add_argument(
        "--fixed-sft-steps",
        type=int,
        default=None,
        help="designs b and c: SFT steps of every variant (default pretrain + sft steps)",
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        type=int,
        default=[32, 256, 2048],
        help="design c: numbers of SFT video edit pairs, small to large",
    )
    parser.add_argument("--bench-samples", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        help="extra `sama fit` argument for every stage, e.g. --fit-arg=--data.init_args.batch_size=8",
    )
    parser.add_argument(
        "--out",
        default=os.environ.get("SAMA_ABLATION_RUN", "runs/ablation"),
        help="run folder (default $SAMA_ABLATION_RUN or runs/ablation; put it outside the "
        "checkout between sittings)",
    )
    parser.add_argument("--results", default=str(ROOT / "docs/results.md"))
    parser.add_argument("--plot", default=str(ROOT / "docs/images/ablation-pairs.png"))
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="take the runs in reverse order (a second process on the same --out meets the "
        "first in the middle; a run another live process holds is skipped and read later)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rewrite the tables and the plot from the runs recorded so far; train nothing",
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.pairs):
        parser.error("--pairs: every N must be at least 1")
    results = recorded(args)
    if args.report:
        report(results, args)
        missing = len([job for job in _jobs(args) if job not in results])
        print(f"wrote {args.results} from {len(results)} recorded run(s); {missing} not run yet")
        return 0
    pending = [job for job in _jobs(args) if job not in results]
    if results:
        print(f"ablation: {len(results)} run(s) already recorded next to {args.results}")
    if args.reverse:
        pending.reverse()
    while pending:
        held = []
        for design, pairs, seed, variant in pending:
            if (design, pairs, seed, variant) in results:
                continue  # recorded by another process meanwhile
            last = plan(
                variant, args.pretrain_steps, args.sft_steps, design, pairs, args.fixed_sft_steps
            )[-1]
            lock = Path(args.out) / last["key"] / f"seed{seed}" / "run.lock"
            if not _acquire(lock):
                held.append((design, pairs, seed, variant))
                continue
            try:
                row = run_one(variant, seed, args, design, pairs)
            finally:
                lock.unlink(missing_ok=True)
            results[(design, pairs, seed, variant)] = {
                "seed": seed,
                "settings": settings(args),
                **row,
            }
            # rows another process (--reverse) recorded meanwhile stay in the tables
            results = {**recorded(args), **results}
            report(results, args)
        if held:
            print(f"ablation: {len(held)} run(s) held by another process; waiting", flush=True)
            time.sleep(POLL_S)
        pending = held
    report(results, args)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
