"""Latent cache: a training step that reads codec latents and text embeddings from a
:class:`~sama.latent_cache.LatentCache` against the same step encoding them every time.

The module is the tiny configs' (MiniLM text encoder, EfficientNet-Lite0 semantic anchors,
Wan transformer of ``configs/_parts/wan-tiny.yaml``: width 64, 2 layers, patch 1x1x1) with
Wan's VAE as the codec, randomly initialised (no weights are downloaded; the cost does not
depend on the values). Two VAE sizes: Wan2.1's architecture (``AutoencoderKLWan()``, base
width 96) and the tests' small one (``tiny_wan_vae_config()``, base width 8). Data: SynthEdit
video pairs, 32 x 32, 9 frames (3 x 4 x 4 latents), batch 4, instruction editing (source and
target both reusable, so both are cached). A step is ``task.prepare`` + ``module.encode`` +
flow losses + backward + AdamW.

The cached module first fills its cache over the batches (what ``datamodules.cache.precompute``
does ahead of training, untimed); then blocks of steps alternate between the cached and the
uncached module over the same batches. Median seconds per step; target cached at least 2x
faster with the Wan2.1 VAE.

    python benchmarks/bench_latent_cache.py [--steps 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules import SynthEditPairs
from datamodules.streams import collate_items
from sama.encoders import tiny_wan_vae_config
from sama.module import SamaModule

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

TARGET = 2.0
VAES = {"Wan2.1 VAE (base 96)": {}, "small VAE (base 8)": tiny_wan_vae_config()}


def model_config(vae: dict[str, Any], cache_dir: str | None) -> dict[str, Any]:
    """The tiny configs' module with ``WanVAECodec(config=vae)`` as the codec."""
    parts = ROOT / "configs" / "_parts"
    encoders = yaml.safe_load((parts / "encoders-cpu.yaml").read_text())["model"]
    wan = dict(yaml.safe_load((parts / "wan-tiny.yaml").read_text())["model.model"])
    wan["wan_config"] = {**wan["wan_config"], "in_channels": 16, "out_channels": 16}
    return {
        "codec": {"class_path": "sama.encoders.WanVAECodec", "init_args": {"config": vae}},
        "text_encoder": encoders["text_encoder"],
        "semantic_encoder": encoders["semantic_encoder"],
        "model": wan,
        "tasks": [
            {"class_path": "tasks.InstructionEditing", "init_args": {"stream": "video_pairs"}}
        ],
        "cache_dir": cache_dir,
        "seed": 0,
    }


def batches(n: int, batch_size: int) -> list[dict[str, Any]]:
    """``n`` collated micro-batches of SynthEdit video pairs (32 x 32, 9 frames)."""
    data = SynthEditPairs(num=n * batch_size, size=(32, 32), frames=9, split="train")
    out = []
    for i in range(n):
        items = [data[i * batch_size + j] for j in range(batch_size)]
        out.append({**collate_items(items), "task": "instruction_editing"})
    return out


def steps(module: SamaModule, data: list[dict[str, Any]]) -> list[float]:
    """Seconds of each training step of ``module`` over ``data``."""
    task = module.tasks_by_name["instruction_editing"]
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for i, batch in enumerate(data):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(i)
        sample = task.prepare(batch, generator)
        fm_loss, sem_loss = module.compute_losses(sample, generator)
        (fm_loss + module.semantic_weight * sem_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def measure(vae: dict[str, Any], n: int, repeats: int, batch_size: int) -> tuple[float, float]:
    data = batches(n, batch_size)
    with tempfile.TemporaryDirectory(prefix="sama-bench-cache-") as tmp:
        plain = SamaModule.from_config(model_config(vae, None))
        cached = SamaModule.from_config(model_config(vae, tmp))
        steps(cached, data)  # fills the cache (precompute), untimed
        cached.flush_cache()
        steps(plain, data[:1])  # warm-up
        uncached_times, cached_times = [], []
        for _ in range(repeats):
            uncached_times += steps(plain, data)
            cached_times += steps(cached, data)
    return statistics.median(uncached_times), statistics.median(cached_times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per block")
    parser.add_argument("--repeats", type=int, default=2, help="blocks per side")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    print(
        f"machine: {machine()}; "
        f"median s/step over {args.repeats} blocks of {args.steps} steps, batch {args.batch_size}"
    )
    print()
    print("| codec | uncached s/step | cached s/step | speed-up |")
    print("|---|---|---|---|")
    ratios = {}
    for name, vae in VAES.items():
        uncached, cached = measure(vae, args.steps, args.repeats, args.batch_size)
        ratios[name] = uncached / cached
        print(f"| {name} | {uncached:.3f} | {cached:.3f} | {ratios[name]:.2f}x |")
    ok = ratios["Wan2.1 VAE (base 96)"] >= TARGET
    print()
    print(
        f"target: cached >= {TARGET:.1f}x faster with the Wan2.1 VAE: {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
