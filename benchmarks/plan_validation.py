"""Validate ``sama plan``'s formulas against measurements on CPU and print a table.

1. FLOPs: ``sama.plan.costs.flops(...)["training"]`` (3 x forward) against
   ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of a small
   SamaTransformer (source + semantic + target tokens), at several sizes; attention runs on
   torch's math SDPA backend there (the counter has no formula for the CPU flash kernel).
2. Activation memory: the predicted peak of a forward + backward (``activation_bytes`` peak;
   the parameter gradients are allocated before the measured step, as in training) against
   the measured peak, with and
   without gradient checkpointing, at several sequence lengths. Measurement: a fresh
   subprocess per point, ``MALLOC_MMAP_THRESHOLD_=65536`` (every large tensor is its own mmap,
   so freed memory leaves the RSS at once), a warm-up step, then ``/proc/self/clear_refs``
   resets the RSS high-water mark (VmHWM) and the measured figure is ``VmHWM - RSS`` before the
   step. fp32 (``32-true``), torch's default SDPA (the CPU flash kernel).

    .venv/bin/python benchmarks/plan_validation.py            # all points (a few minutes)
    .venv/bin/python benchmarks/plan_validation.py --quick    # one small point of each
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (width, heads, ffn, layers, latent frames, latent side) of the points measured.
FLOP_POINTS = [(64, 2, 128, 2, 3, 8), (128, 4, 512, 2, 5, 16), (256, 4, 1024, 3, 5, 24)]
MEMORY_POINTS = [(256, 4, 1024, 4, 5, 16), (256, 4, 1024, 4, 9, 24), (256, 4, 1024, 4, 9, 32)]
#: Other widths / depths, not used when the working-set term was fitted (``--held-out``).
HELD_OUT_POINTS = [(128, 2, 512, 3, 9, 32), (384, 6, 1536, 2, 5, 24)]
TEXT_LEN, TEXT_DIM, SEM_DIM, SEM_TOKENS = 64, 64, 64, 65


def _setup(width: int, heads: int, ffn: int, layers: int, frames: int, side: int) -> tuple:
    import torch

    from sama.model import SamaTransformer, tiny_wan_config
    from sama.plan.arch import ModelSpec
    from sama.plan.costs import Tokens

    config = tiny_wan_config(
        dim=width,
        num_heads=heads,
        ffn_dim=ffn,
        num_layers=layers,
        text_dim=TEXT_DIM,
        rope_max_seq_len=256,
    )
    model = SamaTransformer(config, semantic_dim=SEM_DIM, semantic_hidden=128)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 16, frames, side, side, generator=g)
    inputs = {
        "target_latents": target,
        "timestep": torch.tensor([500.0]),
        "text_states": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g),
        "source_latents": torch.randn(1, 16, frames, side, side, generator=g),
        "semantic_tokens": torch.randn(1, SEM_TOKENS, SEM_DIM, generator=g),
    }
    spec = ModelSpec(config, SEM_DIM, 128, "validation", 16, 1, 1, TEXT_LEN, TEXT_DIM, SEM_TOKENS)
    grid = frames * (side // 2) * (side // 2)
    return model, inputs, spec, Tokens(grid, SEM_TOKENS, grid, TEXT_LEN)


def _step(model: Any, inputs: dict) -> None:
    kwargs = dict(inputs)
    out = model(
        kwargs.pop("target_latents"), kwargs.pop("timestep"), kwargs.pop("text_states"), **kwargs
    )
    (out.velocity.square().mean() + out.semantic.abs().mean()).backward()


def flop_rows() -> list[dict[str, Any]]:
    """Formula vs FlopCounterMode, one row per FLOP_POINTS entry."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from sama.plan.costs import flops

    rows = []
    for point in FLOP_POINTS:
        model, inputs, spec, tokens = _setup(*point)
        counter = FlopCounterMode(display=False)
        # the counter has no formula for the CPU flash kernel; the math backend runs as bmm
        with sdpa_kernel([SDPBackend.MATH]), counter:
            _step(model, inputs)
        measured = counter.get_total_flops()
        predicted = flops(spec, tokens)["training"]
        rows.append(
            {
                "width": point[0],
                "layers": point[3],
                "tokens": tokens.sequence,
                "measured": measured,
                "predicted": predicted,
                "ratio": predicted / measured,
            }
        )
    return rows


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_child(point: list[int], checkpointing: bool) -> dict[str, int]:
    """Runs in the subprocess: peak bytes above the pre-step RSS of one forward + backward."""
    import gc

    import torch

    torch.manual_seed(0)
    model, inputs, _, _ = _setup(*point)
    if checkpointing:
        model.enable_gradient_checkpointing()
    _step(model, inputs)  # warm-up: lazy initialisation, thread pools; allocates the grads
    model.zero_grad(set_to_none=False)  # grads stay allocated, as in training: not measured
    gc.collect()
    before = _rss()
    Path("/proc/self/clear_refs").write_text("5")
    _step(model, inputs)
    return {"measured": _hwm() - before}


def measure(point: tuple, checkpointing: bool, repeats: int) -> int:
    """Median over ``repeats`` fresh subprocesses of :func:`measure_child`."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    values = []
    for _ in range(repeats):
        code = (
            f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.plan_validation "
            f"import measure_child; print(json.dumps(measure_child({list(point)!r}, "
            f"{checkpointing!r})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        values.append(json.loads(out.stdout.strip().splitlines()[-1])["measured"])
    return int(statistics.median(values))


def memory_rows(points: list[tuple], repeats: int) -> list[dict[str, Any]]:
    """Predicted vs measured peak of a forward + backward, with and without checkpointing."""
    from sama.plan.costs import activation_bytes

    rows = []
    for point in points:
        model, _, spec, tokens = _setup(*point)
        acts = activation_bytes(spec, tokens, precision="32-true")
        for checkpointing in (False, True):
            predicted = acts["peak_checkpointed" if checkpointing else "peak"]
            measured = measure(point, checkpointing, repeats)
            rows.append(
                {
                    "width": point[0],
                    "layers": point[3],
                    "tokens": tokens.sequence,
                    "checkpointing": checkpointing,
                    "predicted": predicted,
                    "measured": measured,
                    "ratio": predicted / measured,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small point of each kind")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--held-out", action="store_true", help="measure HELD_OUT_POINTS")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    global FLOP_POINTS
    if args.quick:
        FLOP_POINTS = FLOP_POINTS[:1]
    flop = flop_rows()
    print("FLOPs of one forward + backward: formula (3 x forward) vs FlopCounterMode")
    print(
        f"  {'width':>5} {'layers':>6} {'tokens':>6} {'counted':>14} {'formula':>14} {'ratio':>6}"
    )
    for r in flop:
        print(
            f"  {r['width']:>5} {r['layers']:>6} {r['tokens']:>6} {r['measured']:>14,} "
            f"{r['predicted']:>14,.0f} {r['ratio']:>6.3f}"
        )
    points = MEMORY_POINTS[:1] if args.quick else MEMORY_POINTS
    if args.held_out:
        points = HELD_OUT_POINTS
    mem = memory_rows(points, 1 if args.quick else args.repeats)
    print("\nPeak memory of one forward + backward (fp32, CPU, MiB): formula vs measured")
    print(f"  points: {points} (width, heads, ffn, blocks, latent frames, latent side)")
    print(
        f"  {'width':>5} {'layers':>6} {'tokens':>6} {'ckpt':>5} {'measured':>9} {'formula':>9} {'ratio':>6}"
    )
    for r in mem:
        print(
            f"  {r['width']:>5} {r['layers']:>6} {r['tokens']:>6} {str(r['checkpointing']):>5} "
            f"{r['measured'] / 2**20:>9.1f} {r['predicted'] / 2**20:>9.1f} {r['ratio']:>6.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"flops": flop, "memory": mem}, indent=1) + "\n")
    worst = max(abs(r["ratio"] - 1) for r in mem)
    worst_flop = max(abs(r["ratio"] - 1) for r in flop)
    print(
        f"\nworst FLOP error {worst_flop:.1%} (bound 5%), worst memory error {worst:.1%} (bound 20%)"
    )
    return 0 if worst <= 0.20 and worst_flop <= 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
