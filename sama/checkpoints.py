"""Checkpoint formats: the released SAMA-14B file and the original (DiffSynth) Wan layout.

The authors' SAMA-14B DiT checkpoint is a Wan2.1 state dict in the original / DiffSynth key
layout (``blocks.N.self_attn.q.weight``, ``head.head.weight``, ...) plus three SAMA parts whose
names ``SamaTransformer`` keeps as they are:

==============================  ====================================================
released key                    SamaTransformer key
==============================  ====================================================
``blocks.N.self_attn.q.*``      ``wan.blocks.N.attn1.to_q.*`` (and k, v, o, norm_q, norm_k)
``blocks.N.cross_attn.*``       ``wan.blocks.N.attn2.*``
``blocks.N.norm3.*``            ``wan.blocks.N.norm2.*`` (the cross-attention norm)
``blocks.N.ffn.0`` / ``ffn.2``  ``wan.blocks.N.ffn.net.0.proj`` / ``ffn.net.2``
``blocks.N.modulation``         ``wan.blocks.N.scale_shift_table``
``text_embedding.0`` / ``.2``   ``wan.condition_embedder.text_embedder.linear_1`` / ``_2``
``time_embedding.0`` / ``.2``   ``wan.condition_embedder.time_embedder.linear_1`` / ``_2``
``time_projection.1``           ``wan.condition_embedder.time_proj``
``head.head`` / ``head.modulation``  ``wan.proj_out`` / ``wan.scale_shift_table``
``patch_embedding.*``           ``wan.patch_embedding.*``
``segment_embedding.weight``    ``segment_embedding.weight`` (3 x dim type embedding)
``siglip_feat_mlp.*``           ``siglip_feat_mlp.*`` (semantic projector)
``semantic_head.*``             ``semantic_head.*``
==============================  ====================================================

The Wan config is inferred from tensor shapes, except the attention head width, which is 128
for every released Wan2.1 model and is a keyword argument here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sama.files import atomic_write
from sama.model import SamaTransformer

__all__ = [
    "CheckpointFormatError",
    "original_to_diffusers_key",
    "diffusers_to_original_key",
    "infer_wan_config",
    "load_state_dict_file",
    "load_sama_release",
    "export_sama_release",
]

_SAMA_PREFIXES = ("segment_embedding.", "siglip_feat_mlp.", "semantic_head.")

# (original fragment, diffusers fragment); applied to the part after ``blocks.N.`` or at the top.
_BLOCK_RENAMES: list[tuple[str, str]] = [
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm3.", "norm2."),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
    ("modulation", "scale_shift_table"),
]
_TOP_RENAMES: list[tuple[str, str]] = [
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"),
    ("patch_embedding.", "patch_embedding."),
]
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


class CheckpointFormatError(ValueError):
    """A checkpoint file whose keys or shapes do not match the expected layout."""


def _rename(key: str, pairs: list[tuple[str, str]], *, reverse: bool) -> str | None:
    for original, diffusers in pairs:
        src, dst = (diffusers, original) if reverse else (original, diffusers)
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def original_to_diffusers_key(key: str) -> str:
    """Map one released / DiffSynth key to its ``SamaTransformer`` key (see the module table)."""
    if key.startswith(_SAMA_PREFIXES):
        return key
    match = _BLOCK_KEY.match(key)
    if match:
        renamed = _rename(match.group(2), _BLOCK_RENAMES, reverse=False)
        if renamed is not None:
            return f"wan.blocks.{match.group(1)}.{renamed}"
    else:
        renamed = _rename(key, _TOP_RENAMES, reverse=False)
        if renamed is not None:
            return f"wan.{renamed}"
    raise CheckpointFormatError(f"unexpected key {key!r} in a SAMA / Wan original-layout file")


def diffusers_to_original_key(key: str) -> str:
    """Inverse of :func:`original_to_diffusers_key`."""
    if key.startswith(_SAMA_PREFIXES):
        return key
    if not key.startswith("wan."):
        raise CheckpointFormatError(f"unexpected SamaTransformer key {key!r}")
    inner = key[len("wan.") :]
    match = _BLOCK_KEY.match(inner)
    if match:
        renamed = _rename(match.group(2), _BLOCK_RENAMES, reverse=True)
        if renamed is not None:
            return f"blocks.{match.group(1)}.{renamed}"
    else:
        renamed = _rename(inner, _TOP_RENAMES, reverse=True)
        if renamed is not None:
            return renamed
    raise CheckpointFormatError(f"SamaTransformer key {key!r} has no original-layout name")


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file, a folder of ``*.safetensors`` shards, or a ``.pt/.pth``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give a local file or folder")
    if path.is_dir():
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise CheckpointFormatError(f"{path}: no *.safetensors files in this folder")
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(str(shard)))
        return state
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return state
    raise CheckpointFormatError(f"{path}: unknown checkpoint type; use .safetensors or .pt/.pth")


def infer_wan_config(state: dict[str, Tensor], *, attention_head_dim: int = 128) -> dict:
    """Wan config of an original-layout state dict, from its tensor shapes."""
    try:
        patch = state["patch_embedding.weight"]
        head = state["head.head.weight"]
        text = state["text_embedding.0.weight"]
        time = state["time_embedding.0.weight"]
        ffn = state["blocks.0.ffn.0.weight"]
    except KeyError as err:
        raise CheckpointFormatError(
            f"missing {err.args[0]!r}: not a Wan2.1 DiT state dict in the original layout"
        ) from None
    dim, in_channels, *patch_size = patch.shape
    if dim % attention_head_dim:
        raise CheckpointFormatError(
            f"model width {dim} is not a multiple of attention_head_dim={attention_head_dim}"
        )
    num_layers = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    patch_volume = patch_size[0] * patch_size[1] * patch_size[2]
    return {
        "patch_size": list(patch_size),
        "num_attention_heads": dim // attention_head_dim,
        "attention_head_dim": attention_head_dim,
        "in_channels": in_channels,
        "out_channels": head.shape[0] // patch_volume,
        "text_dim": text.shape[1],
        "freq_dim": time.shape[1],
        "ffn_dim": ffn.shape[0],
        "num_layers": num_layers,
        "cross_attn_norm": "blocks.0.norm3.weight" in state,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in state else None,
        "eps": 1e-6,
    }


def load_sama_release(
    path: str | os.PathLike[str],
    *,
    attention_head_dim: int = 128,
    wan_config: dict | None = None,
) -> SamaTransformer:
    """Build a :class:`SamaTransformer` from the released SAMA checkpoint (or any file in its layout).

    Args:
        path: local ``.safetensors`` / ``.pt`` file or a folder of safetensors shards.
        attention_head_dim: Wan's head width (128 for all Wan2.1 releases).
        wan_config: explicit Wan config; inferred from the shapes when omitted.
    """
    original = load_state_dict_file(path)
    if "siglip_feat_mlp.fc1.weight" not in original or "semantic_head.proj.weight" not in original:
        raise CheckpointFormatError(
            f"{path}: no siglip_feat_mlp / semantic_head tensors; this is a plain Wan checkpoint, "
            "load it with SamaTransformer.from_pretrained on a diffusers folder instead"
        )
    config = wan_config or infer_wan_config(original, attention_head_dim=attention_head_dim)
    fc1 = original["siglip_feat_mlp.fc1.weight"]
    model = SamaTransformer(config, semantic_dim=fc1.shape[1], semantic_hidden=fc1.shape[0])
    converted = {original_to_diffusers_key(k): v for k, v in original.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{path}: {len(missing)} missing and {len(unexpected)} unexpected tensors "
            f"(first missing: {missing[:3]}, first unexpected: {unexpected[:3]})"
        )
    for key, value in converted.items():
        if value.shape != expected[key].shape:
            raise CheckpointFormatError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(converted, strict=True)
    return model


def export_sama_release(model: SamaTransformer, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as one safetensors file in the released (original Wan) key layout.

    The file is written to a temporary name and renamed, so ``path`` is never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        diffusers_to_original_key(k): v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    return atomic_write(path, lambda tmp: save_file(state, tmp))
