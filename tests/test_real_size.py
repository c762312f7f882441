"""Real-size architectures: the Wan2.1 configs' SamaTransformer on the meta device, and the
random-weight Wan writer (benchmarks/make_random_wan.py) at tiny size (1.3B: slow test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from sama.plan import build_meta_model, describe_run, load_fit_config, parameter_counts

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.make_random_wan import write_random_wan  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
#: (config, fixture of the released layout, width, blocks, heads, ffn)
REAL = [
    ("wan2.1-1.3b/pretrain.yaml", "wan21_t2v_1.3b_original_layout.json", 1536, 30, 12, 8960),
    ("wan2.1-14b/sft.yaml", "wan21_t2v_14b_original_layout.json", 5120, 40, 40, 13824),
]


@pytest.mark.parametrize(("config", "fixture", "dim", "layers", "heads", "ffn"), REAL)
def test_real_size_model_on_meta(
    config: str, fixture: str, dim: int, layers: int, heads: int, ffn: int
) -> None:
    run = describe_run(load_fit_config(str(ROOT / "configs" / config)))
    model = build_meta_model(run.model)
    assert all(p.is_meta for p in model.parameters())
    wan = model.wan
    assert (wan.config.num_layers, wan.config.num_attention_heads) == (layers, heads)
    assert wan.blocks[0].attn1.to_q.weight.shape == (dim, dim)
    assert wan.blocks[0].ffn.net[0].proj.weight.shape == (ffn, dim)
    assert wan.blocks[0].attn2.to_k.weight.shape == (dim, dim)
    assert wan.condition_embedder.text_embedder.linear_1.weight.shape == (dim, 4096)
    assert wan.patch_embedding.weight.shape == (dim, 16, 1, 2, 2)
    assert wan.proj_out.weight.shape == (16 * 4, dim)
    assert model.segment_embedding.weight.shape == (3, dim)
    assert model.siglip_feat_mlp.fc1.weight.shape == (1024, 1152)
    assert model.semantic_head.proj.weight.shape == (1152, dim)
    counts = parameter_counts(model)
    wan_params = json.loads((FIXTURES / fixture).read_text())["num_parameters"]
    sama = 3 * dim + 2 * 1152 + 1152 * 1024 + 1024 + 1024 * dim + dim + 2 * dim + dim * 1152 + 1152
    assert counts["sama"] == sama
    assert counts["total"] == wan_params + sama
    assert counts["trainable"] == counts["total"]


def _check_written(out: Path, semantic_dim: int) -> None:
    from sama.encoders import WanVAECodec
    from sama.model import SamaTransformer

    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel"
    model = SamaTransformer.from_pretrained(out, semantic_dim=semantic_dim)
    std = model.wan.blocks[0].attn1.to_q.weight.float().std().item()
    assert 0.015 < std < 0.025  # random N(0, 0.02), not an untouched init
    assert torch.all(model.wan.blocks[0].norm2.weight == 1)
    codec = WanVAECodec(path=str(out))
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (16, 4, 8)
    return model, codec


def test_random_wan_writer_tiny(tmp_path: Path) -> None:
    out = write_random_wan(tmp_path / "wan", "tiny", seed=3)
    model, codec = _check_written(out, semantic_dim=32)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, 16, 2, 4, 4)
    out_ = model(latents, torch.tensor([500.0]), torch.randn(1, 7, 4096))
    assert out_.velocity.shape == latents.shape and torch.isfinite(out_.velocity).all()
    again = write_random_wan(tmp_path / "wan2", "tiny", seed=3, vae=False)
    assert not (again / "vae").exists()
    a = (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (again / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b  # same seed, same file


@pytest.mark.slow
def test_random_wan_writer_real_1_3b(tmp_path: Path) -> None:
    """The real-size write (about 5.7 GB in fp32 plus the 0.5 GB VAE; a minute or more)."""
    out = write_random_wan(tmp_path / "wan-1.3b", "1.3B")
    model, _ = _check_written(out, semantic_dim=1152)
    assert model.wan.config.num_layers == 30 and model.dim == 1536


def test_gpu_benchmark_tiny_mode_runs_on_cpu(tmp_path: Path) -> None:
    from benchmarks.gpu_train_step import main as gpu_main

    out = tmp_path / "rows.json"
    assert gpu_main(["--tiny", "--steps", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["size"] == "tiny" and row["tokens"]["sequence"] == 8 + 13 + 8
    assert row["s_per_step"] > 0 and row["s_per_denoising_step"] > 0
    assert row["loss"] == row["loss"]  # finite, not NaN
    assert row["parameters"]["trainable"] == row["parameters"]["total"]


@pytest.mark.slow
def test_real_size_lora_fit_on_cpu(tmp_path: Path, capsys) -> None:
    # benchmarks/real_size_cpu.py: `sama fit` for 3 steps on a random Wan2.1-1.3B (bf16,
    # LoRA r16, gradient checkpointing, 64x64x5) next to `sama plan`; exit 0 needs all 3 steps
    # and the frozen base weights unchanged
    from benchmarks.real_size_cpu import main as real_size_main

    figures = tmp_path / "figures.json"
    assert real_size_main(["--workdir", str(tmp_path), "--json", str(figures)]) == 0
    record = json.loads(figures.read_text())
    assert record["measured"]["global_step"] == 3 and record["measured"]["base_unchanged"]
    assert record["measured"]["parameters"] > 1.4e9
    assert record["measured"]["trainable_parameters"] < 0.05 * record["measured"]["parameters"]
    assert "| peak RSS vs planned total (GiB) |" in capsys.readouterr().out
