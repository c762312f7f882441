"""``make train-tiny``: reproduce a shipped editor, resumable in chunks.

``--recipe tiny-editor`` (default) runs ``configs/tiny/editor-pretrain.yaml`` (stage 0) then
``configs/tiny/editor-sft.yaml`` (stage 1, initialised from stage 0) into ``runs/tiny-editor/``
and exports ``weights/tiny-editor/``; ``--recipe real-editor`` does the same with
``configs/tiny/real-editor-{pretrain,sft}.yaml`` (64 x 64 real footage) into
``runs/real-editor/`` and ``weights/real-editor/``. ``--run DIR`` (or ``$SAMA_TINY_RUN``)
puts the run elsewhere, e.g. outside the checkout: run state is never committed, so a
fresh clone trains from scratch by the recipe. Each call resumes the
unfinished stage from its ``last.ckpt`` (saved every 100 steps), so the recipe can run in
chunks: ``--max-time 00:00:45:00`` stops a chunk after 45 minutes. When stage 1 has reached
its ``max_steps``, the EMA weights are exported to ``weights/<recipe>/`` with a
``SHA256SUMS`` file and a ``summary.json`` (steps, training time, last logged losses and
benchmark scalars). ``--export-now`` exports stage 1 as it stands, marked
``"complete": false`` in ``summary.json`` (an interim editor between chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sama.checkpoint_io import CheckpointError, load_checkpoint_file
from sama.cli import SamaCLI
from sama.module import SamaModule

__all__ = ["main"]

RECIPES: dict[str, tuple[tuple[str, str], ...]] = {
    "tiny-editor": (
        ("pretrain", "configs/tiny/editor-pretrain.yaml"),
        ("sft", "configs/tiny/editor-sft.yaml"),
    ),
    "real-editor": (
        ("pretrain", "configs/tiny/real-editor-pretrain.yaml"),
        ("sft", "configs/tiny/real-editor-sft.yaml"),
    ),
}
"""Each shipped editor's stages: (stage name, config), stage 1 initialised from stage 0."""

STAGES = RECIPES["tiny-editor"]


def steps_done(ckpt: Path) -> int:
    """Optimizer steps recorded in a Lightning checkpoint (0 when it does not exist)."""
    if not ckpt.exists():
        return 0
    return int(load_checkpoint_file(ckpt, what="checkpoint")["global_step"])


def _seconds(duration: str) -> float:
    """``DD:HH:MM:SS`` -> seconds."""
    parts = duration.split(":")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise SystemExit(f"train-tiny: --max-time must be DD:HH:MM:SS, got {duration!r}")
    days, hours, minutes, secs = (int(p) for p in parts)
    return float(((days * 24 + hours) * 60 + minutes) * 60 + secs)


def _chunk_limit(ckpt: Path, chunk: str) -> str:
    """Lightning's ``max_time`` counts the training time stored in the checkpoint's Timer
    state, so a chunk of ``chunk`` after a resume needs that time added to the limit."""
    elapsed = 0.0
    if ckpt.exists():
        state = load_checkpoint_file(ckpt, what="checkpoint").get("callbacks", {})
        elapsed = float(state.get("Timer", {}).get("time_elapsed", {}).get("train", 0.0))
    total = int(elapsed + _seconds(chunk))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def _max_steps(config: str) -> int:
    """``trainer.max_steps`` of ``config`` as ``sama fit`` resolves it (the configs are composed
    from ``configs/_parts/``, so the value may come from an included file)."""
    import contextlib
    import io

    import yaml

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        SamaCLI(args=["fit", f"--config={config}", "--print_config"])
    resolved = yaml.safe_load(out.getvalue()) or {}
    if "trainer" not in resolved:
        raise SystemExit(f"train-tiny: {config} does not parse; run `sama fit --config={config}`")
    return int(resolved["trainer"]["max_steps"])


def _events(log_dir: Path) -> Any:
    """Every scalar of a TensorBoard log folder (an ``EventAccumulator``), or None."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.is_dir():
        return None
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def training_seconds(log_dir: Path, max_gap: float = 600.0) -> float:
    """Seconds spent training according to a TensorBoard log folder: the sum of the gaps
    between consecutive ``train/loss`` events, leaving out gaps over ``max_gap`` (the pauses
    between chunks). Counts every chunk, including ones whose process was killed."""
    events = _events(log_dir)
    if events is None or "train/loss" not in events.Tags()["scalars"]:
        return 0.0
    times = sorted(e.wall_time for e in events.Scalars("train/loss"))
    return float(sum(b - a for a, b in zip(times, times[1:], strict=False) if b - a <= max_gap))


def _export(
    run: Path, out: Path, wall: dict[str, float], stages: tuple[tuple[str, str], ...] = STAGES
) -> None:
    """Export stage 1's ``last.ckpt`` to ``out`` with a ``summary.json`` (checksummed with the
    rest; ``SamaModule.export`` writes beside ``out`` and renames, replacing an old export)."""

    ckpt = run / "sft" / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise SystemExit(f"train-tiny: {ckpt} does not exist; train stage 1 first")
    module = SamaModule.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True)
    steps = {stage: steps_done(run / stage / "checkpoints" / "last.ckpt") for stage, _ in stages}
    targets = {stage: _max_steps(config) for stage, config in stages}
    summary = {
        "recipe": [config for _, config in stages],
        "complete": all(steps[stage] >= targets[stage] for stage in steps),
        "steps": steps,
        "max_steps": targets,
        "ema_weights": True,
        "training_seconds_from_logs": {
            stage: round(training_seconds(run / stage)) for stage, _ in stages
        },
        "wall_seconds_of_train_tiny_chunks": wall,
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "last_logged": _last_scalars(run / "sft"),
        "parameters": sum(p.numel() for p in module.model.parameters()),
    }
    module.export(out, extra_files={"summary.json": json.dumps(summary, indent=2) + "\n"})
    state = "final" if summary["complete"] else f"interim ({steps['sft']}/{targets['sft']} steps)"
    print(f"exported the editor ({state}) to {out}")


def _last_scalars(log_dir: Path) -> dict[str, float]:
    """The last value of each loss / benchmark scalar in a TensorBoard log folder."""
    events = _events(log_dir)
    if events is None:
        return {}
    out = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith(("val/", "bench/", "train/loss")):
            last = events.Scalars(tag)[-1]
            out[f"{tag}@{last.step}"] = round(float(last.value), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except CheckpointError as error:
        print(f"train-tiny: error: {error}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sama.train_tiny", description=__doc__)
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default="tiny-editor", help="which shipped editor"
    )
    parser.add_argument(
        "--run",
        default=os.environ.get("SAMA_TINY_RUN"),
        help="run folder holding both stages' logs and checkpoints (default $SAMA_TINY_RUN or "
        "runs/<recipe>; put it outside the checkout to keep run state out of the repo)",
    )
    parser.add_argument("--out", default=None, help="export folder (default weights/<recipe>)")
    parser.add_argument("--max-time", default=None, help="stop this chunk after DD:HH:MM:SS")
    parser.add_argument(
        "--export-now",
        action="store_true",
        help="only export stage 1's last.ckpt as it is (an interim editor; summary.json says so)",
    )
    args = parser.parse_args(argv)
    stages = RECIPES[args.recipe]
    run = Path(args.run or f"runs/{args.recipe}")
    out = Path(args.out or f"weights/{args.recipe}")
    wall_path = run / "wall_seconds.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
    if args.export_now:
        _export(run, out, wall, stages)
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for stage, config in stages:
        ckpt = run / stage / "checkpoints" / "last.ckpt"
        done = steps_done(ckpt)  # first: a refused checkpoint stops before anything else
        target = _max_steps(config)
        if done >= target:
            print(f"{stage}: finished ({done} steps)")
            continue
        command = [
            sys.executable,
            "-m",
            "sama",
            "fit",
            f"--config={config}",
            f"--trainer.logger.init_args.save_dir={run}",
        ]
        if stage != stages[0][0]:  # initialised from this run's stage 0, wherever --run is
            command.append(f"--model.init_from={run / stages[0][0] / 'checkpoints' / 'last.ckpt'}")
        # "last" without a checkpoint starts the stage, also in a folder left by a chunk
        # killed before its first checkpoint (sama fit refuses other re-runs into a run folder)
        command.append(f"--ckpt_path={ckpt}" if ckpt.exists() else "--ckpt_path=last")
        if args.max_time:
            limit = _chunk_limit(ckpt, args.max_time)
            command.append(f"--trainer.max_time={limit}")
        print(f"{stage}: {done}/{target} steps done; $ {' '.join(command[2:])}", flush=True)
        start = time.monotonic()
        result = subprocess.run(command, env=env)
        wall[stage] = wall.get(stage, 0.0) + time.monotonic() - start
        run.mkdir(parents=True, exist_ok=True)
        wall_path.write_text(json.dumps(wall, indent=2) + "\n")
        if result.returncode != 0:
            print(f"train-tiny: stage {stage} failed (exit {result.returncode})", file=sys.stderr)
            return result.returncode
        done = steps_done(ckpt)
        if done < target:
            print(f"{stage}: stopped at {done}/{target} steps; run again to resume")
            return 0
    _export(run, out, wall, stages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
