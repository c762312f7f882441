"""The factorization ablation at tiny scale: which parts of SAMA help editing?

Variants (every one trained with the same total number of optimizer steps, ``P + S``):

| variant      | stage 0 (P steps)                              | stage 1 (S steps) |
|--------------|------------------------------------------------|-------------------|
| baseline     | -  (SFT for P + S steps, no SA, no MA)         | SFT, lambda = 0   |
| sa           | -  (SFT for P + S steps)                       | SFT + SA          |
| ma           | pretext tasks, lambda = 0                      | SFT, lambda = 0   |
| sa_ma        | pretext tasks + SA (the full recipe)           | SFT + SA          |
| cube / speed / tube | that one pretext task + SA              | SFT + SA          |
| zero_shot    | pretext tasks + SA for P + S steps             | none              |

Each (variant, seed) is scored with ``sama test`` on SynthEdit's held-out split; the table of
mean +- std over seeds goes to ``docs/results.md`` (between marker lines) with the commands,
machine, steps and wall time. Every run resumes from its ``last.ckpt``, and finished runs and
benchmarks are skipped, so the ablation can be spread over several sittings::

    python benchmarks/ablation.py --pretrain-steps 500 --sft-steps 500 --seeds 0 1 2
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
METRICS = ["edit_region_psnr", "preservation_psnr", "psnr", "ssim"]
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def _tasks(names: list[str], with_sa: bool) -> str:
    tasks = [{"class_path": PRETEXT[n][0], "init_args": {"weight": PRETEXT[n][1]}} for n in names]
    return json.dumps(tasks + ([SA_TASK] if with_sa else []))


def plan(variant: str, p: int, s: int) -> list[dict]:
    """The stages of one variant: ``[{"name", "config", "steps", "overrides"}]``."""
    all_pretext = ["reconstruction", "cube", "speed", "tube"]
    sft = "configs/ablation/sft.yaml"
    pre = "configs/ablation/pretrain.yaml"
    no_sa = ["--model.semantic_weight=0"]
    if variant == "baseline":
        return [{"name": "sft", "config": sft, "steps": p + s, "overrides": no_sa}]
    if variant == "sa":
        return [{"name": "sft", "config": sft, "steps": p + s, "overrides": []}]
    if variant == "zero_shot":
        overrides = [f"--model.tasks={_tasks(all_pretext, True)}"]
        return [{"name": "pretrain", "config": pre, "steps": p + s, "overrides": overrides}]
    if variant == "ma":
        stage0 = [f"--model.tasks={_tasks(all_pretext, False)}", *no_sa]
        stage1 = no_sa
    elif variant == "sa_ma":
        stage0, stage1 = [f"--model.tasks={_tasks(all_pretext, True)}"], []
    elif variant in ("cube", "speed", "tube"):
        stage0, stage1 = [f"--model.tasks={_tasks([variant], True)}"], []
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    return [
        {"name": "pretrain", "config": pre, "steps": p, "overrides": stage0},
        {"name": "sft", "config": sft, "steps": s, "overrides": stage1},
    ]


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


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """Train (resuming) and benchmark one (variant, seed); returns the model's overall means."""
    run = Path(args.out) / variant / f"seed{seed}"
    wall_path = run / "wall_seconds.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
    previous = None
    for stage in plan(variant, args.pretrain_steps, args.sft_steps):
        ckpt = run / stage["name"] / "checkpoints" / "last.ckpt"
        if steps_done(ckpt) < stage["steps"]:
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
            if ckpt.exists():
                command.append(f"--ckpt_path={ckpt}")
            wall[stage["name"]] = wall.get(stage["name"], 0.0) + _sama(command)
            run.mkdir(parents=True, exist_ok=True)
            wall_path.write_text(json.dumps(wall) + "\n")
        previous = ckpt
    bench = run / "bench"
    size, frames = _clip_shape(plan(variant, args.pretrain_steps, args.sft_steps)[-1]["config"])
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
    overall = results["overall"]
    row = {m: overall["model"]["metrics"].get(m, {}).get("mean") for m in METRICS}
    row["identity"] = {m: overall["identity"]["metrics"].get(m, {}).get("mean") for m in METRICS}
    row["wall_s"] = sum(wall.values())
    return row


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def table(rows: dict[str, list[dict]]) -> str:
    head = "| variant | seeds | " + " | ".join(METRICS) + " | train wall (s, mean) |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for variant, runs in rows.items():
        cells = [_fmt([r[m] for r in runs]) for m in METRICS]
        wall = statistics.mean(r["wall_s"] for r in runs)
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + f" | {wall:.0f} |")
    first = next(iter(rows.values()))
    identity = [_fmt([r["identity"][m] for r in first]) for m in METRICS]
    lines.append("| identity (source returned) | - | " + " | ".join(identity) + " | - |")
    return "\n".join(lines)


def paired_table(rows: dict[str, list[dict]], reference: str = "baseline") -> str:
    """Each variant minus ``reference`` on the same seed (mean ± std of the differences)."""
    ref = {r["seed"]: r for r in rows.get(reference, []) if "seed" in r}
    metrics = METRICS[:2]
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


def write_results(path: Path, rows: dict[str, list[dict]], args: argparse.Namespace) -> None:
    command = "python benchmarks/ablation.py " + " ".join(sys.argv[1:])
    body = f"""{BEGIN}
Measured with `{command}` on {platform.node() or "this machine"} ({os.cpu_count()} CPU cores,
{platform.processor() or platform.machine()}, no GPU): stage 0 {args.pretrain_steps} steps,
stage 1 {args.sft_steps} steps (single-stage variants: {args.pretrain_steps + args.sft_steps}),
scored on {args.bench_samples} SynthEdit held-out samples with {args.sample_steps} sampler steps.
Mean ± std over seeds; PSNR in dB. Training wall time summed over all runs:
{sum(r["wall_s"] for runs in rows.values() for r in runs) / 60:.0f} min. Per-run numbers:
`{path.with_name(path.stem + "-ablation.json").name}`.

{table(rows)}

Differences from the SFT-only baseline, paired by seed (the same seed sets data, task draws
and initialisation), in dB:

{paired_table(rows)}
{END}"""
    text = path.read_text() if path.exists() else "# Results\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + body + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    runs = path.with_name(path.stem + "-ablation.json")
    per_run = [{"variant": v, **r} for v, rs in rows.items() for r in rs]
    runs.with_suffix(".tmp").write_text(json.dumps(per_run, indent=1) + "\n")
    runs.with_suffix(".tmp").replace(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--sft-steps", type=int, default=500)
    parser.add_argument("--bench-samples", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        help="extra `sama fit` argument for every stage, e.g. --fit-arg=--data.init_args.batch_size=8",
    )
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--results", default=str(ROOT / "docs/results.md"))
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="take the runs in reverse order (a second process on the same --out meets the "
        "first in the middle; a run another live process holds is skipped and read later)",
    )
    args = parser.parse_args(argv)
    # Seed-major, and the table is rewritten after every run: a sitting that stops early still
    # leaves every variant compared on the seeds finished so far.
    pending = [(seed, variant) for seed in args.seeds for variant in args.variants]
    if args.reverse:
        pending.reverse()
    results: dict[tuple[int, str], dict] = {}
    while pending:
        held = []
        for seed, variant in pending:
            lock = Path(args.out) / variant / f"seed{seed}" / "run.lock"
            if not _acquire(lock):
                held.append((seed, variant))
                continue
            try:
                results[(seed, variant)] = {"seed": seed, **run_one(variant, seed, args)}
            finally:
                lock.unlink(missing_ok=True)
            rows = {
                v: [results[(s, v)] for s in args.seeds if (s, v) in results] for v in args.variants
            }
            write_results(Path(args.results), {v: r for v, r in rows.items() if r}, args)
        if held:
            print(f"ablation: {len(held)} run(s) held by another process; waiting", flush=True)
            time.sleep(30)
        pending = held
    rows = {v: [results[(s, v)] for s in args.seeds] for v in args.variants}
    print(table(rows))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
