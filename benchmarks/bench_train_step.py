"""Training-step cost of SamaTransformer sizes on this machine (forward + backward + AdamW).

Prints one row per configuration: tokens in the sequence ([source][semantic][target]),
parameters and the median seconds per step over a few repeats. Used to size the tiny configs
(values per token <= model width; see docs/performance.md).

    python benchmarks/bench_train_step.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sama.model import SamaTransformer, tiny_wan_config

# name, latent channels, frames, latent side, width, layers, heads, batch
CONFIGS = [
    ("tiny default: pix4 9f w64 L2 B4", 48, 9, 8, 64, 2, 2, 4),
    ("tiny editor: pix4 9f w128 L4 B8", 48, 9, 8, 128, 4, 4, 8),
    ("pix4 9f w128 L4 B16", 48, 9, 8, 128, 4, 4, 16),
    ("pix4 5f w128 L4 B16", 48, 5, 8, 128, 4, 4, 16),
    ("pix8 9f w256 L4 B16", 192, 9, 4, 256, 4, 8, 16),
]


def step_seconds(channels, frames, side, width, layers, heads, batch, repeats):
    config = tiny_wan_config(
        in_channels=channels,
        text_dim=384,
        dim=width,
        num_layers=layers,
        num_heads=heads,
        patch_size=(1, 1, 1),
        ffn_dim=4 * width,
        freq_dim=64,
    )
    model = SamaTransformer(config, semantic_dim=64, semantic_hidden=256)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(batch, channels, frames, side, side, generator=g)
    source = torch.randn(batch, channels, frames, side, side, generator=g)
    text = torch.randn(batch, 32, 384, generator=g)
    semantic = torch.randn(batch, 65, 64, generator=g)
    times = []
    for _ in range(repeats + 1):  # the first step warms up and is dropped
        start = time.perf_counter()
        out = model(
            target,
            torch.full((batch,), 500.0),
            text,
            source_latents=source,
            semantic_tokens=semantic,
        )
        loss = out.velocity.pow(2).mean() + out.semantic.abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    return 2 * frames * side * side + 65, params, statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| {'configuration':34s} | tokens | params | s/step (median) |")
    print(f"|{'-' * 36}|--------|--------|-----------------|")
    for name, *shape in CONFIGS:
        tokens, params, seconds = step_seconds(*shape, repeats=args.repeats)
        print(f"| {name:34s} | {tokens:6d} | {params / 1e6:5.2f}M | {seconds:15.2f} |")


if __name__ == "__main__":
    main()
