"""Write a random-weight Wan2.1 transformer and Wan VAE in diffusers format (no download).

The folder has the layout of a ``Wan-AI/Wan2.1-T2V-*-Diffusers`` pipeline repo, so every
real-size path that reads one (``SamaTransformer.from_pretrained``, ``WanVAECodec(path=...)``,
``sama plan``, the GPU benchmark) can run without hub weights::

    OUT/transformer/config.json + diffusion_pytorch_model*.safetensors   WanTransformer3DModel
    OUT/vae/config.json + diffusion_pytorch_model.safetensors            AutoencoderKLWan

Sizes: ``1.3B`` and ``14B`` use the released Wan2.1-T2V configs (``sama.plan.arch.wan21_config``);
the VAE is diffusers' default ``AutoencoderKLWan`` config (Wan2.1's VAE). ``tiny`` writes a
2-block transformer and a small VAE (tests). Weights are N(0, 0.02) (norm scales 1, biases 0),
drawn from ``--seed``.

    .venv/bin/python benchmarks/make_random_wan.py --size 1.3B --out /tmp/wan-1.3b-random
    .venv/bin/python benchmarks/make_random_wan.py --size tiny --out /tmp/wan-tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = ("tiny", "1.3B", "14B")


def transformer_config(size: str) -> dict[str, Any]:
    """The ``WanTransformer3DModel`` kwargs of ``size``."""
    from sama.model import tiny_wan_config
    from sama.plan.arch import wan21_config

    if size == "tiny":
        return tiny_wan_config(text_dim=4096, dim=64, num_layers=2, num_heads=2, ffn_dim=128)
    return wan21_config(size)


def vae_config(size: str) -> dict[str, Any]:
    """``AutoencoderKLWan`` kwargs: diffusers' defaults (Wan2.1's VAE), small for ``tiny``."""
    from sama.encoders import tiny_wan_vae_config

    return tiny_wan_vae_config() if size == "tiny" else {}


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter in place: norm scales 1, biases 0, the rest N(0, 0.02)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.ndim == 1 and "norm" in name:
            param.fill_(1.0)
        else:
            values = torch.empty(param.shape, dtype=torch.float32).normal_(
                0, 0.02, generator=generator
            )
            param.copy_(values)
    return module


def _materialize(cls: type, config: dict[str, Any], dtype: torch.dtype, seed: int) -> Any:
    """Build ``cls(**config)`` on the meta device, then allocate and fill (skips slow init)."""
    with torch.device("meta"):
        module = cls(**config)
    module = module.to_empty(device="cpu")
    # buffers (Wan's RoPE tables) are computed values: rebuild them from a CPU instance
    for name, buffer in _cpu_buffers(cls, config).items():
        module.get_buffer(name).copy_(buffer)
    randomize_(module, seed)
    return module if dtype == torch.float32 else module.to(dtype)


def _cpu_buffers(cls: type, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    if cls.__name__ != "WanTransformer3DModel":
        return {}
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    heads = config["attention_head_dim"]
    rope = WanRotaryPosEmbed(heads, config["patch_size"], config.get("rope_max_seq_len", 1024))
    return {f"rope.{name}": value for name, value in rope.named_buffers()}


def write_random_wan(
    out: str | Path,
    size: str = "1.3B",
    *,
    dtype: str = "float32",
    seed: int = 0,
    vae: bool = True,
) -> Path:
    """Write ``OUT/transformer`` (and ``OUT/vae``) with random weights; returns ``OUT``."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    if size not in SIZES:
        raise ValueError(f"make_random_wan: size must be one of {SIZES}, got {size!r}")
    torch_dtype = getattr(torch, dtype)
    out = Path(out)
    wan = _materialize(WanTransformer3DModel, transformer_config(size), torch_dtype, seed)
    wan.save_pretrained(out / "transformer", max_shard_size="5GB")
    del wan
    if vae:
        model = _materialize(AutoencoderKLWan, vae_config(size), torch.float32, seed + 1)
        model.save_pretrained(out / "vae")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="1.3B")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vae", action="store_true")
    args = parser.parse_args(argv)
    path = write_random_wan(
        args.out, args.size, dtype=args.dtype, seed=args.seed, vae=not args.no_vae
    )
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"wrote {path} ({total / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
