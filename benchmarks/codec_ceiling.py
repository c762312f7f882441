"""The PSNR ceiling a video codec puts on an editor: ``decode(encode(x))`` against ``x``.

An editor's output passes through its codec, so no edit can be closer to its target, nor keep
more of the source, than the codec's round trip allows. This prints, for :class:`DCTCodec`
settings (and :class:`PixelCodec`, lossless, for reference), the values each 8x8 pixel block
becomes and the round-trip PSNR on SynthEdit-on-real-footage sources of the held-out split
(footage never seen in training) at the real-footage editor's size::

    python benchmarks/codec_ceiling.py --samples 24 --size 64 64 --frames 9
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from datamodules.synthedit.real_footage import RealFootageGenerator  # noqa: E402
from sama.encoders import DCTCodec, PixelCodec  # noqa: E402
from sama.evaluation.metrics import PSNR_CAP_DB, psnr_from_mse  # noqa: E402

SETTINGS = [(16, 4), (24, 4), (32, 8), (40, 12), (64, 16)]
"""``(luma, chroma)`` coefficients kept per 8x8 block; the editor's default is (32, 8)."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1], on [0, 1] data as the benchmark's metrics."""
    return float(psnr_from_mse(((a - b) / 2).pow(2).mean()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--split", default="heldout", choices=["heldout", "test"])
    args = parser.parse_args(argv)
    generator = RealFootageGenerator(size=tuple(args.size), frames=args.frames, split=args.split)
    sources = torch.stack([generator.sample(i).source for i in range(args.samples)])
    video = sources.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, T, H, W) in [-1, 1]
    print(f"machine: {machine()}")
    print(
        f"{args.samples} {args.split} real-footage sources, {args.frames} frames at "
        f"{args.size[0]}x{args.size[1]}\n"
    )
    print("| codec | values per 8x8 block | latent std | round-trip PSNR (dB) |")
    print("|---|---|---|---|")
    codecs = [(f"DCTCodec(luma={y}, chroma={c})", DCTCodec(y, c)) for y, c in SETTINGS]
    codecs.append(("PixelCodec(spatial_factor=8)", PixelCodec(spatial_factor=8)))
    for name, codec in codecs:
        latents = codec.encode(video)
        value = psnr(codec.decode(latents), video)
        shown = "lossless" if value >= PSNR_CAP_DB else f"{value:.2f}"
        print(f"| {name} | {latents.shape[1]} | {float(latents.std()):.2f} | {shown} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
