"""SAMA training-step and denoising-step throughput of real-size random-weight models on a GPU.

One command, at most about 8 minutes on one H200::

    python benchmarks/gpu_train_step.py                 # 1.3B, then 14B where sama plan says it fits
    python benchmarks/gpu_train_step.py --tiny          # CPU smoke run at tiny size (the test)

For Wan2.1-1.3B and -14B, with random weights built in place (no files, no download): the
SAMA training step (forward, backward, AdamW step; bf16 autocast, gradient checkpointing,
torch SDPA) on one 480x832, 81-frame sample with a source clip and 65 semantic tokens (2 x
21 x 30 x 52 + 65 = 65,585 tokens), then the time per denoising step of ``sama edit`` (two
guided forwards, bf16, no grad). Prints s/step, tokens/s, TFLOP/s and MFU by ``sama plan``'s
FLOP formula (``sama.plan.costs.flops``, model FLOPs = 3 x forward), and the measured peak
memory next to ``sama plan``'s prediction (weights, gradients, AdamW states, autocast copies and
activations on one device; no encoders are loaded here). 14B runs only where the plan says the
full fine-tune (or, with ``--lora-rank``, a LoRA run) fits on this one device.

The GPU machine lacks diffusers / jsonargparse / av. Carry the wheels in the ignored
``.wheels/`` folder and install them offline first::

    # here (with network):  .venv/bin/pip download diffusers peft safetensors -d .wheels
    # there:                pip install --no-index --find-links .wheels diffusers peft safetensors
    #                       python benchmarks/gpu_train_step.py --out $OUT/gpu_train_step.json

No GPU has been available to this project so far: the figures of this script have not been
measured yet (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEMANTIC_DIM, SEMANTIC_HIDDEN, SEMANTIC_TOKENS, TEXT_LEN = 1152, 1024, 65, 512


def _spec(size: str) -> Any:
    from sama.model import tiny_wan_config
    from sama.plan.arch import ModelSpec, wan21_config

    if size == "tiny":
        config = tiny_wan_config(text_dim=64, dim=64, num_layers=2, num_heads=2, ffn_dim=128)
        return ModelSpec(config, 32, 64, "tiny", 16, 4, 8, 16, 64, 13)
    return ModelSpec(
        wan21_config(size),
        SEMANTIC_DIM,
        SEMANTIC_HIDDEN,
        f"Wan2.1-T2V-{size} (random)",
        16,
        4,
        8,
        TEXT_LEN,
        4096,
        SEMANTIC_TOKENS,
    )


def _build(spec: Any, device: torch.device, lora_rank: int | None) -> torch.nn.Module:
    """Random-weight SamaTransformer on ``device``: built on meta, allocated, N(0, 0.02)
    (norm scales 1, biases 0, as ``benchmarks/make_random_wan.py`` writes them)."""
    from sama.model import SamaTransformer

    with torch.device("meta"):
        model = SamaTransformer(
            spec.wan_config, semantic_dim=spec.semantic_dim, semantic_hidden=spec.semantic_hidden
        )
    model = model.to_empty(device=device)
    rope = SamaTransformer(
        {**spec.wan_config, "num_layers": 0}, semantic_dim=8, semantic_hidden=8
    ).wan.rope
    for name, buffer in rope.named_buffers():
        model.wan.rope.get_buffer(name).copy_(buffer)
    with torch.no_grad():
        for name, p in model.named_parameters():  # filled on the device itself
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02)
    if lora_rank:
        from sama.lora import LoraSettings, apply_lora

        apply_lora(model, LoraSettings(rank=lora_rank, alpha=float(lora_rank)))
        model.to(device)
    return model


def _inputs(spec: Any, device: torch.device, frames: int, height: int, width: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    t = 1 + (frames - 1) // spec.temporal_factor
    shape = (1, 16, t, height // spec.spatial_factor, width // spec.spatial_factor)
    return {
        "target": torch.randn(shape, device=device, generator=g),
        "source": torch.randn(shape, device=device, generator=g),
        "text": torch.randn(1, spec.text_length, spec.text_dim, device=device, generator=g),
        "semantic": torch.randn(
            1, spec.semantic_tokens, spec.semantic_dim, device=device, generator=g
        ),
        "timestep": torch.tensor([500.0], device=device),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _predicted(spec: Any, tokens: Any, params: dict, trainable: int, cuda: bool) -> int:
    from sama.plan.costs import activation_bytes

    acts = activation_bytes(spec, tokens, precision="bf16-mixed" if cuda else "32-true")
    compute = 2 * trainable if cuda else 0
    return params["total"] * 4 + trainable * 12 + compute + acts["peak_checkpointed"]


def run_size(
    size: str,
    device: torch.device,
    *,
    steps: int,
    frames: int,
    height: int,
    width: int,
    lora_rank: int | None = None,
) -> dict[str, Any]:
    """Train ``steps`` steps (after one warm-up) and time ``steps`` denoising steps."""
    from sama.plan.arch import Bucket, parameter_counts
    from sama.plan.costs import bucket_tokens, flops

    spec = _spec(size)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = _build(spec, device, lora_rank)
    model.enable_gradient_checkpointing()
    params = parameter_counts(model)
    trainable = params["trainable"]
    tokens = bucket_tokens(spec, Bucket("bench", "clips", frames, height, width, frames, 1))
    cost = flops(spec, tokens)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    x = _inputs(spec, device, frames, height, width)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def train_step() -> float:
        with autocast:
            out = model(
                x["target"],
                x["timestep"],
                x["text"],
                source_latents=x["source"],
                semantic_tokens=x["semantic"],
            )
            loss = out.velocity.float().square().mean() + 0.1 * out.semantic.float().abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return float(loss.detach())

    train_step()  # warm-up (allocates gradients and optimizer states)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = train_step()
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else 0

    model.eval()
    with torch.no_grad(), autocast:

        def denoise_step() -> None:  # guided: instruction + negative prompt, source in both
            for _ in range(2):
                model(
                    x["target"],
                    x["timestep"],
                    x["text"],
                    source_latents=x["source"],
                    semantic_tokens=x["semantic"],
                )

        denoise_step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            denoise_step()
        _sync(device)
        denoise_s = (time.perf_counter() - start) / steps
    achieved = cost["training"] / step_s / 1e12
    peak_tflops = 989.0 if cuda else float("nan")
    result = {
        "size": size,
        "lora_rank": lora_rank,
        "tokens": tokens.as_dict(),
        "parameters": params,
        "loss": loss,
        "s_per_step": step_s,
        "tokens_per_s": tokens.sequence / step_s,
        "tflops": achieved,
        "mfu": achieved / peak_tflops,
        "peak_bytes": peak,
        "predicted_bytes": _predicted(spec, tokens, params, trainable, cuda),
        "s_per_denoising_step": denoise_s,
    }
    return result


def fits_on_device(size: str, capacity: int, lora_rank: int | None) -> tuple[bool, str]:
    """``sama plan``'s verdict for one device (no encoders loaded: their bytes are left out)."""
    from sama.plan.arch import Bucket, RunSpec
    from sama.plan.planner import make_plan

    spec = _spec(size)
    spec.encoders = {}
    run = RunSpec(
        "gpu_train_step",
        spec,
        [Bucket("bench", "clips", 81, 480, 832, 81, 1)],
        "bf16-mixed",
        "single",
        "",
        False,
        1,
        1,
        True,
        "native",
        "",
        None,
        1,
        0.1,
    )
    plan = make_plan(run, capacity=capacity, devices=1, lora_rank=lora_rank)
    ddp = plan["strategies"]["ddp"]
    return bool(ddp["fits"]), ddp["verdict"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--sizes", nargs="+", default=["1.3B", "14B"])
    parser.add_argument("--lora-rank", type=int, default=None, help="14B as LoRA if needed")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    if args.tiny:
        device, sizes, shape = torch.device("cpu"), ["tiny"], (5, 32, 32)
    else:
        if not torch.cuda.is_available():
            print("gpu_train_step: no CUDA device; run with --tiny on CPU", file=sys.stderr)
            return 2
        device, sizes, shape = torch.device("cuda"), args.sizes, (81, 480, 832)
    rows = []
    for size in sizes:
        lora = None
        if device.type == "cuda":
            capacity = torch.cuda.get_device_properties(0).total_memory
            fits, verdict = fits_on_device(size, capacity, None)
            if not fits and args.lora_rank:
                fits, verdict = fits_on_device(size, capacity, args.lora_rank)
                lora = args.lora_rank if fits else None
            print(f"{size}: sama plan on this device: {verdict}", flush=True)
            if not fits:
                rows.append({"size": size, "skipped": verdict})
                continue
        row = run_size(
            size,
            device,
            steps=args.steps,
            frames=shape[0],
            height=shape[1],
            width=shape[2],
            lora_rank=lora,
        )
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(
            f"{size}{' LoRA r' + str(lora) if lora else ''}: {row['tokens']['sequence']} tokens, "
            f"{row['s_per_step']:.3f} s/step, {row['tokens_per_s']:,.0f} tokens/s, "
            f"{row['tflops']:.1f} TFLOP/s, MFU {row['mfu']:.1%}, peak "
            f"{row['peak_bytes'] / 2**30:.1f} GiB (plan {row['predicted_bytes'] / 2**30:.1f} GiB), "
            f"{row['s_per_denoising_step']:.3f} s per denoising step",
            flush=True,
        )
    print(
        f"\n{'size':<6} {'tokens':>7} {'s/step':>8} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'peak GiB':>9} {'plan GiB':>9} {'s/denoise':>10}"
    )
    for r in rows:
        if "skipped" in r:
            print(f"{r['size']:<6} skipped: {r['skipped']}")
            continue
        print(
            f"{r['size']:<6} {r['tokens']['sequence']:>7} {r['s_per_step']:>8.3f} "
            f"{r['tokens_per_s']:>9,.0f} {r['tflops']:>8.1f} {r['mfu']:>6.1%} "
            f"{r['peak_bytes'] / 2**30:>9.1f} {r['predicted_bytes'] / 2**30:>9.1f} "
            f"{r['s_per_denoising_step']:>10.3f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
