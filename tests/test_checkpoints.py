"""Released SAMA / original Wan layout <-> SamaTransformer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sama.checkpoints import (
    CheckpointFormatError,
    diffusers_to_original_key,
    export_sama_release,
    infer_wan_config,
    load_sama_release,
    original_to_diffusers_key,
)
from sama.model import SamaTransformer, tiny_wan_config


def _randomised_model() -> SamaTransformer:
    model = SamaTransformer(tiny_wan_config(), semantic_dim=48, semantic_hidden=24)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _inputs() -> tuple:
    g = torch.Generator().manual_seed(1)
    target = torch.randn(1, 16, 2, 4, 4, generator=g)
    source = torch.randn(1, 16, 2, 4, 4, generator=g)
    text = torch.randn(1, 5, 32, generator=g)
    sem = torch.randn(1, 65, 48, generator=g)
    return target, torch.tensor([500.0]), text, source, sem


def test_release_key_names() -> None:
    assert (
        original_to_diffusers_key("blocks.3.self_attn.q.weight") == "wan.blocks.3.attn1.to_q.weight"
    )
    assert (
        original_to_diffusers_key("blocks.0.cross_attn.o.bias")
        == "wan.blocks.0.attn2.to_out.0.bias"
    )
    assert original_to_diffusers_key("blocks.1.norm3.weight") == "wan.blocks.1.norm2.weight"
    assert original_to_diffusers_key("blocks.1.modulation") == "wan.blocks.1.scale_shift_table"
    assert original_to_diffusers_key("head.modulation") == "wan.scale_shift_table"
    assert original_to_diffusers_key("head.head.weight") == "wan.proj_out.weight"
    assert original_to_diffusers_key("siglip_feat_mlp.fc1.weight") == "siglip_feat_mlp.fc1.weight"
    with pytest.raises(CheckpointFormatError, match="unexpected key"):
        original_to_diffusers_key("blocks.0.mystery.weight")


def test_every_model_key_round_trips() -> None:
    for key in _randomised_model().state_dict():
        assert original_to_diffusers_key(diffusers_to_original_key(key)) == key


def test_export_then_load_gives_identical_outputs(tmp_path) -> None:
    model = _randomised_model()
    path = export_sama_release(model, tmp_path / "sama.safetensors")
    keys = set(load_file(str(path)))
    assert "blocks.0.self_attn.q.weight" in keys and "segment_embedding.weight" in keys
    assert not any(k.startswith("wan.") for k in keys)
    loaded = load_sama_release(path, attention_head_dim=32).eval()
    target, t, text, source, sem = _inputs()
    with torch.no_grad():
        a = model(target, t, text, source_latents=source, semantic_tokens=sem)
        b = loaded(target, t, text, source_latents=source, semantic_tokens=sem)
    assert torch.equal(a.velocity, b.velocity) and torch.equal(a.semantic, b.semantic)


def test_infer_config_matches_the_tiny_model(tmp_path) -> None:
    path = export_sama_release(_randomised_model(), tmp_path / "m.safetensors")
    config = infer_wan_config(load_file(str(path)), attention_head_dim=32)
    expected = tiny_wan_config()
    for field in (
        "patch_size",
        "num_attention_heads",
        "in_channels",
        "out_channels",
        "text_dim",
        "freq_dim",
        "ffn_dim",
        "num_layers",
        "qk_norm",
        "cross_attn_norm",
    ):
        assert config[field] == expected[field], field


def test_plain_wan_file_and_bad_shapes_are_refused(tmp_path) -> None:
    state = load_file(str(export_sama_release(_randomised_model(), tmp_path / "m.safetensors")))
    plain = {k: v for k, v in state.items() if not k.startswith(("siglip", "semantic_head"))}
    save_file(plain, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointFormatError, match="plain Wan checkpoint"):
        load_sama_release(tmp_path / "plain.safetensors", attention_head_dim=32)
    state["segment_embedding.weight"] = torch.zeros(2, 64)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointFormatError, match="segment_embedding"):
        load_sama_release(tmp_path / "bad.safetensors", attention_head_dim=32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sama_release(tmp_path / "nope.safetensors")
