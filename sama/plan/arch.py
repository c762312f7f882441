"""What a config trains: the transformer (built on the meta device), the encoders, the buckets.

:func:`describe_run` turns a parsed ``sama fit`` config (a jsonargparse namespace, includes
resolved) into a :class:`RunSpec` without loading any weights: the Wan config comes from
``model.model.wan_config``, from the ``config.json`` of a real ``pretrained`` folder, or, for a
placeholder path naming a released Wan2.1 model, from :data:`WAN21_T2V`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sama.lora import LoraSettings, apply_lora
from sama.model import SamaTransformer
from tasks.base import _import_object

__all__ = [
    "WAN21_T2V",
    "SIGLIP_SO400M",
    "Bucket",
    "ModelSpec",
    "RunSpec",
    "build_meta_model",
    "describe_run",
    "parameter_counts",
    "wan21_config",
]


def wan21_config(size: str) -> dict[str, Any]:
    """The ``WanTransformer3DModel`` config of Wan2.1-T2V ``"1.3B"`` or ``"14B"``.

    Values of the released ``transformer/config.json`` of ``Wan-AI/Wan2.1-T2V-*-Diffusers``
    (1.3B: width 1536 = 12 heads x 128, FFN 8960, 30 blocks; 14B: width 5120 = 40 x 128, FFN
    13824, 40 blocks; both: umT5 text width 4096, 256 timestep frequencies, 16 latent channels,
    patch (1, 2, 2), qk RMS norm across heads, cross-attention norm, eps 1e-6, RoPE 1024).
    """
    sizes = {"1.3B": (12, 8960, 30), "14B": (40, 13824, 40)}
    if size not in sizes:
        raise ValueError(f"wan21_config: size must be one of {sorted(sizes)}, got {size!r}")
    heads, ffn, layers = sizes[size]
    return {
        "patch_size": [1, 2, 2],
        "num_attention_heads": heads,
        "attention_head_dim": 128,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": ffn,
        "num_layers": layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
    }


WAN21_T2V: dict[str, dict[str, Any]] = {s: wan21_config(s) for s in ("1.3B", "14B")}
#: SigLIP so400m-patch14-384 vision tower (the semantic encoder of the paper).
SIGLIP_SO400M: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
}
#: umT5-XXL encoder (Wan's text encoder).
UMT5_XXL: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
}


@dataclass(frozen=True)
class Bucket:
    """One training shape: a task on a stream at a resolution and frame count.

    ``frames`` pixel frames (1 for images), ``height`` x ``width`` pixels; ``source_frames``
    pixel frames of the source (0: no source); ``batch`` the micro-batch of this stream.
    """

    task: str
    stream: str
    frames: int
    height: int
    width: int
    source_frames: int
    batch: int


@dataclass
class ModelSpec:
    """Everything the cost model needs about the transformer and its inputs."""

    wan_config: dict[str, Any]
    semantic_dim: int
    semantic_hidden: int
    origin: str
    latent_channels: int
    temporal_factor: int
    spatial_factor: int
    text_length: int
    text_dim: int
    semantic_tokens: int
    encoders: dict[str, int] = field(default_factory=dict)  # frozen encoder name -> bytes


@dataclass
class RunSpec:
    """A ``sama fit`` config reduced to what ``sama plan`` needs."""

    config_path: str
    model: ModelSpec
    buckets: list[Bucket]
    precision: str
    strategy: str  # "ddp" | "fsdp" | "single"
    sharding: str  # FULL_SHARD / HYBRID_SHARD / ... for FSDP, "" otherwise
    cpu_offload: bool
    devices: int
    nodes: int
    gradient_checkpointing: bool
    attention_backend: str
    ema: str  # "" (none), "all" (EMAWeightAveraging copies every weight), "trainable" (ShardedEMA)
    lora: dict[str, Any] | None
    accumulate: int
    semantic_weight: float


def _get(ns: Any, dotted: str, default: Any = None) -> Any:
    """``ns.a.b.c`` of a jsonargparse namespace / mapping, ``default`` when any part is absent."""
    cur = ns
    for part in dotted.split("."):
        if cur is None:
            return default
        if isinstance(cur, Mapping):
            cur = cur.get(part, None)
        else:
            cur = getattr(cur, part, None)
    return default if cur is None else cur


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return dict(value)


def _class_name(spec: Any) -> str:
    return str(_get(spec, "class_path", "")).rsplit(".", 1)[-1]


def _wan_config_of(model: Any) -> tuple[dict[str, Any], str]:
    options = _as_dict(_get(model, "model"))
    if options.get("wan_config"):
        return dict(options["wan_config"]), "model.model.wan_config"
    pretrained = _get(model, "pretrained")
    if pretrained is None:
        raise ValueError(
            "sama plan: the config has neither model.model.wan_config nor model.pretrained"
        )
    path = Path(str(pretrained))
    for candidate in (
        path / "sama_config.json",
        path / "config.json",
        path / "transformer" / "config.json",
    ):
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            data = data.get("wan_config", data)
            return {k: v for k, v in data.items() if not k.startswith("_")}, str(candidate)
    match = re.search(r"Wan2\.1-T2V-(1\.3B|14B)", str(pretrained), flags=re.IGNORECASE)
    if match:
        size = "1.3B" if match.group(1).lower() == "1.3b" else "14B"
        return wan21_config(size), f"Wan2.1-T2V-{size} (released config; {pretrained} not read)"
    raise ValueError(
        f"sama plan: cannot tell the Wan config of pretrained={pretrained}: it is not a local "
        "model folder and does not name Wan2.1-T2V-1.3B / -14B; set model.model.wan_config"
    )


def _semantic(model: Any) -> tuple[int, int, int]:
    """``(semantic_dim, tokens_per_frame, frozen bytes)`` of the semantic encoder."""
    spec = _get(model, "semantic_encoder")
    name = _class_name(spec)
    args = _as_dict(_get(spec, "init_args"))
    if name == "SiglipSemanticEncoder":
        cfg = dict(SIGLIP_SO400M)
        path = args.get("path")
        if path and (Path(path) / "config.json").is_file():
            data = json.loads((Path(path) / "config.json").read_text())
            cfg.update(data.get("vision_config", data))
        cfg.update(_as_dict(args.get("config")))  # a reduced config given inline
        per = 2 if args.get("dtype") in ("bfloat16", "float16") else 4
        return int(cfg["hidden_size"]), 65, _siglip_params(cfg) * per
    if name == "PooledPixelSemanticEncoder":
        return int(args.get("dim", 64)), 65, 0
    encoder = _instantiate(spec, "semantic encoder")
    return int(encoder.dim), int(encoder.tokens_per_frame), _module_bytes(encoder)


def _instantiate(spec: Any, what: str) -> Any:
    """Build an encoder this module has no size rule for (small, local weights only)."""

    try:
        cls = _import_object(str(_get(spec, "class_path")))
        return cls(**_as_dict(_get(spec, "init_args")))
    except Exception as error:  # noqa: BLE001 (any failure: one line naming the encoder)
        raise ValueError(
            f"sama plan: cannot size the {what} {_get(spec, 'class_path')}: {error}"
        ) from error


def _module_bytes(module: Any) -> int:
    if not isinstance(module, nn.Module):
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _siglip_params(cfg: Mapping[str, Any]) -> int:
    """Parameter count of a SigLIP vision tower (built on the meta device)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    config = SiglipVisionConfig(
        **{k: cfg[k] for k in keys}, image_size=cfg["image_size"], patch_size=cfg["patch_size"]
    )
    with torch.device("meta"):
        return sum(p.numel() for p in SiglipVisionModel(config).parameters())


def _umt5_params(cfg: Mapping[str, Any]) -> int:
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        return sum(p.numel() for p in UMT5EncoderModel(UMT5Config(**cfg)).parameters())


def _vae_params(path: str | None) -> int:
    from diffusers import AutoencoderKLWan

    config: dict[str, Any] = {}
    if path:
        for candidate in (Path(path) / "vae" / "config.json", Path(path) / "config.json"):
            if candidate.is_file():
                data = json.loads(candidate.read_text())
                if data.get("_class_name") == "AutoencoderKLWan":
                    config = {k: v for k, v in data.items() if not k.startswith("_")}
                    break
    with torch.device("meta"):
        return sum(p.numel() for p in AutoencoderKLWan(**config).parameters())


def _codec(model: Any) -> tuple[int, int, int, int]:
    """``(latent_channels, temporal_factor, spatial_factor, frozen bytes)`` of the codec."""
    spec = _get(model, "codec")
    name = _class_name(spec)
    args = _as_dict(_get(spec, "init_args"))
    if name == "WanVAECodec":
        return 16, 4, 8, _vae_params(args.get("path")) * 4
    if name == "PixelCodec":
        s, t = int(args.get("spatial_factor", 4)), int(args.get("temporal_factor", 1))
        return 3 * t * s * s, t, s, 0
    codec = _instantiate(spec, "codec")
    return (
        int(codec.latent_channels),
        int(codec.temporal_factor),
        int(codec.spatial_factor),
        _module_bytes(codec),
    )


def _text(model: Any) -> tuple[int, int, int]:
    """``(max_length, dim, frozen bytes)`` of the text encoder."""
    spec = _get(model, "text_encoder")
    name = _class_name(spec)
    args = _as_dict(_get(spec, "init_args"))
    if name == "UMT5TextEncoder":
        per = 2 if args.get("dtype") in ("bfloat16", "float16") else 4
        cfg = dict(UMT5_XXL)
        path = args.get("path")
        for candidate in (Path(str(path)) / "text_encoder", Path(str(path))) if path else ():
            if (candidate / "config.json").is_file():
                data = json.loads((candidate / "config.json").read_text())
                cfg.update({k: v for k, v in data.items() if k in UMT5_XXL})
                break
        cfg.update(_as_dict(args.get("config")))  # a reduced config given inline
        return int(args.get("max_length", 512)), int(cfg["d_model"]), _umt5_params(cfg) * per
    if name == "MiniLMTextEncoder":
        return int(args.get("max_length", 64)), 384, 22_713_216 * 4
    if name == "RandomTextEncoder":
        return int(args.get("max_length", 16)), int(args.get("dim", 32)), 0
    encoder = _instantiate(spec, "text encoder")
    return int(encoder.max_length), int(encoder.dim), _module_bytes(encoder)


_STREAM_BATCH = {"image_pairs": "image_batch_size"}


def _stream_shapes(data_args: Any, stream: str) -> list[tuple[int, int, int]]:
    """``(frames, height, width)`` of every dataset of a datamodule stream."""
    shapes = []
    for dataset in _get(data_args, stream) or []:
        args = _as_dict(_get(dataset, "init_args"))
        frames = args.get("frames") or 1
        sizes = args.get("buckets") or ([args["size"]] if args.get("size") else [])
        for size in sizes:
            shapes.append((int(frames), int(size[0]), int(size[1])))
    return sorted(set(shapes))


def _buckets(config: Any, semantic_weight: float) -> list[Bucket]:
    data_args = _get(config, "data.init_args")
    batch = int(_get(data_args, "batch_size", 1))
    buckets: list[Bucket] = []
    for task in _get(config, "model.tasks") or []:
        name = _class_name(task)
        args = _as_dict(_get(task, "init_args"))

        cls = _import_object(str(_get(task, "class_path")))
        stream = args.get("stream") or getattr(cls, "stream", "clips")
        stream_batch = int(_get(data_args, _STREAM_BATCH.get(stream, "batch_size"), 0) or batch)
        no_source = name == "Reconstruction" and args.get("mode", "generation") == "generation"
        for frames, height, width in _stream_shapes(data_args, stream):
            source = 0 if no_source else frames
            buckets.append(Bucket(name, stream, frames, height, width, source, stream_batch))
    if not buckets:
        raise ValueError("sama plan: the config's tasks and data streams give no training shape")
    return buckets


def describe_run(config: Any, config_path: str = "") -> RunSpec:
    """Reduce a parsed ``sama fit`` config (jsonargparse namespace) to a :class:`RunSpec`."""
    model = _get(config, "model")
    wan_config, origin = _wan_config_of(model)
    options = _as_dict(_get(model, "model"))
    semantic_dim, per_frame, semantic_bytes = _semantic(model)
    channels, tf, sf, codec_bytes = _codec(model)
    text_length, text_dim, text_bytes = _text(model)
    semantic_weight = float(_get(model, "semantic_weight", 0.1))
    anchors = int(_get(model, "anchor_frames", 1))
    spec = ModelSpec(
        wan_config=wan_config,
        semantic_dim=semantic_dim,
        semantic_hidden=int(options.get("semantic_hidden", 1024)),
        origin=origin,
        latent_channels=channels,
        temporal_factor=tf,
        spatial_factor=sf,
        text_length=text_length,
        text_dim=text_dim,
        semantic_tokens=per_frame * anchors if semantic_weight > 0 else 0,
        encoders={
            "codec": codec_bytes,
            "text_encoder": text_bytes,
            "semantic_encoder": semantic_bytes,
        },
    )
    trainer = _get(config, "trainer")
    strategy_path = str(_get(trainer, "strategy.class_path", _get(trainer, "strategy", "auto")))
    devices = _get(trainer, "devices", 1)
    devices = int(devices) if str(devices).isdigit() else 1
    nodes = int(_get(trainer, "num_nodes", 1))
    if "FSDP" in strategy_path:
        strategy = "fsdp"
        sharding = str(_get(trainer, "strategy.init_args.sharding_strategy", "FULL_SHARD"))
        sharding = sharding.rsplit(".", 1)[-1].split(":")[0].strip("<>")
        cpu_offload = bool(_get(trainer, "strategy.init_args.cpu_offload", False))
    else:
        strategy = "ddp" if devices * nodes > 1 or "DDP" in strategy_path else "single"
        sharding, cpu_offload = "", False
    callbacks = _get(trainer, "callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    ema_names = [_class_name(c) for c in callbacks if "EMA" in _class_name(c)]
    ema = "trainable" if "ShardedEMA" in ema_names else ("all" if ema_names else "")
    lora = _get(model, "lora")
    return RunSpec(
        config_path=config_path,
        model=spec,
        buckets=_buckets(config, semantic_weight),
        precision=str(_get(trainer, "precision", "32-true")),
        strategy=strategy,
        sharding=sharding,
        cpu_offload=cpu_offload,
        devices=devices,
        nodes=nodes,
        gradient_checkpointing=bool(_get(model, "gradient_checkpointing", False)),
        attention_backend=str(options.get("attention_backend") or "native"),
        ema=ema,
        lora=_as_dict(lora) if lora else None,
        accumulate=int(_get(trainer, "accumulate_grad_batches", 1)),
        semantic_weight=semantic_weight,
    )


def build_meta_model(spec: ModelSpec, lora: Mapping[str, Any] | None = None) -> nn.Module:
    """The :class:`~sama.model.SamaTransformer` of ``spec`` on the meta device (no memory).

    With ``lora`` (``LoraSettings`` fields) the adapters are injected as in training, so
    ``requires_grad`` marks exactly what the optimizer would train.
    """

    with torch.device("meta"):
        model = SamaTransformer(
            spec.wan_config, semantic_dim=spec.semantic_dim, semantic_hidden=spec.semantic_hidden
        )
        if lora:
            apply_lora(model, LoraSettings.parse(dict(lora)))
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``total``, ``trainable`` (``requires_grad``), ``blocks`` (in ``wan.blocks``), ``sama``
    (segment embedding + semantic projector + head) and ``largest_block`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = list(model.wan.blocks)
    block_sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    sama = sum(
        p.numel()
        for name in ("segment_embedding", "siglip_feat_mlp", "semantic_head")
        for p in getattr(model, name).parameters()
    )
    return {
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "blocks": sum(block_sizes),
        "largest_block": max(block_sizes) if block_sizes else 0,
        "sama": sama,
    }
