"""Per-sample costs of one SAMA training step: tokens, FLOPs and activation memory.

Notation (per sample): ``S = S_src + N_sem + S_tgt`` transformer tokens, ``L`` text tokens,
``d`` width, ``F`` FFN width, ``h`` heads, ``n`` blocks, ``a`` bytes of an activation in the
compute dtype (2 under bf16/fp16 mixed precision, 4 in fp32), ``c = C * p_t * p_h * p_w`` values
per latent patch.

FLOPs (a multiply-add is 2 FLOPs; only matmuls, convolutions and attention are counted, like
``torch.utils.flop_counter.FlopCounterMode``)::

    linear    = 2 * n * (S * (6 d^2 + 2 d F) + 2 L d^2)          # q k v o, cross q o, FFN; cross k v
              + 2 * ((S_src + S_tgt) * c d + S_tgt * d c)         # patch embedding, proj_out
              + 2 * L * (D_text d + d^2) + 2 * N_sem * (D_sem H + H d + d D_sem)
              + 2 * (f d + 7 d^2)                                 # timestep embedding (f freqs)
    attention = n * (4 S^2 d + 4 S L d)                          # QK^T and PV, self and cross
    forward = linear + attention
    training = 3 * forward - first   (backward = 2 x forward, less the input gradients of the
               first layers, whose inputs need none: first = 2 ((S_src + S_tgt) c d
               + L D_text d + N_sem D_sem H + f d))
    with gradient checkpointing the hardware also recomputes the forward: + forward

Activation memory (bytes saved for backward; derived from the tensors autograd saves in
diffusers' ``WanTransformerBlock`` and checked against a saved-tensor trace in the tests)::

    per block  = S d (48 + 10 a) + 2 a S F + 8 S h + 32 S + L d (4 + 6 a)
    stream     = S d a + 8 S (d / h)                      # block input, the RoPE tables
    head       = S_tgt d (8 + a)                          # norm_out, modulation, proj_out
    saved              = n * per block + stream + head
    saved_checkpointed = n * S d a + stream + per block   # block inputs + one recomputed block
                                                          # (the head is freed by then)
    math attention (no flash / memory-efficient kernel) adds  h S^2 a  per block (the softmax)
    peak = saved + working, with the backward working set  working = 12 S d  (three fp32
    (S, d) gradient buffers; measured on CPU, see docs/performance.md)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sama.plan.arch import Bucket, ModelSpec

__all__ = ["Tokens", "activation_bytes", "bucket_tokens", "flops", "MATH_BACKENDS"]

#: diffusers attention backends that materialise the (S x S) attention matrix.
MATH_BACKENDS = frozenset({"_native_math", "math"})


@dataclass(frozen=True)
class Tokens:
    """Tokens per sample: ``source``, ``semantic``, ``target`` (transformer sequence) and ``text``."""

    source: int
    semantic: int
    target: int
    text: int

    @property
    def sequence(self) -> int:
        return self.source + self.semantic + self.target

    def as_dict(self) -> dict[str, int]:
        return {
            "source": self.source,
            "semantic": self.semantic,
            "target": self.target,
            "text": self.text,
            "sequence": self.sequence,
        }


def _latent_tokens(spec: ModelSpec, frames: int, height: int, width: int) -> int:
    p_t, p_h, p_w = spec.wan_config["patch_size"]
    tf, sf = spec.temporal_factor, spec.spatial_factor
    if frames < 1 or (frames - 1) % tf:
        raise ValueError(f"sama plan: {frames} frames do not fit the codec's 1 + {tf}k frames")
    if height % (sf * p_h) or width % (sf * p_w):
        raise ValueError(
            f"sama plan: {height}x{width} is not divisible by codec x patch ({sf * p_h}, {sf * p_w})"
        )
    latent_frames = 1 + (frames - 1) // tf
    return -(-latent_frames // p_t) * (height // sf // p_h) * (width // sf // p_w)


def bucket_tokens(spec: ModelSpec, bucket: Bucket) -> Tokens:
    """Token counts of one sample of ``bucket``."""
    target = _latent_tokens(spec, bucket.frames, bucket.height, bucket.width)
    source = (
        _latent_tokens(spec, bucket.source_frames, bucket.height, bucket.width)
        if bucket.source_frames
        else 0
    )
    return Tokens(source, spec.semantic_tokens, target, spec.text_length)


def _dims(spec: ModelSpec) -> tuple[int, int, int, int, int]:
    c = spec.wan_config
    d = c["num_attention_heads"] * c["attention_head_dim"]
    p = c["patch_size"][0] * c["patch_size"][1] * c["patch_size"][2]
    return d, c["ffn_dim"], c["num_attention_heads"], c["num_layers"], p


def flops(spec: ModelSpec, tokens: Tokens) -> dict[str, float]:
    """Forward FLOPs of one sample, split into ``linear`` and ``attention``, plus ``forward``,
    ``training`` (3 x forward: the model FLOPs MFU is quoted in) and ``recompute_training``
    (4 x forward, what the hardware runs with gradient checkpointing)."""
    d, ffn, _, n, p = _dims(spec)
    cfg = spec.wan_config
    S, L = tokens.sequence, tokens.text
    c_in, c_out = cfg["in_channels"] * p, cfg["out_channels"] * p
    linear = 2 * n * (S * (6 * d * d + 2 * d * ffn) + 2 * L * d * d)
    linear += 2 * ((tokens.source + tokens.target) * c_in * d + tokens.target * d * c_out)
    linear += 2 * L * (cfg["text_dim"] * d + d * d)
    linear += 2 * (cfg["freq_dim"] * d + d * d + 6 * d * d)  # timestep embedding, once
    linear += (
        2
        * tokens.semantic
        * (
            spec.semantic_dim * spec.semantic_hidden
            + spec.semantic_hidden * d
            + d * spec.semantic_dim
        )
    )
    attention = n * (4 * S * S * d + 4 * S * L * d)
    forward = float(linear + attention)
    # layers fed by inputs that need no gradient have no input-gradient matmul in backward
    first = 2 * (
        (tokens.source + tokens.target) * c_in * d
        + L * cfg["text_dim"] * d
        + tokens.semantic * spec.semantic_dim * spec.semantic_hidden
        + cfg["freq_dim"] * d
    )
    return {
        "linear": float(linear),
        "attention": float(attention),
        "forward": forward,
        "training": 3 * forward - first,
        "recompute_training": 4 * forward - first,
    }


def activation_bytes(
    spec: ModelSpec, tokens: Tokens, *, precision: str, attention_backend: str = "native"
) -> dict[str, Any]:
    """Activation memory of one sample (bytes): ``saved`` without and ``saved_checkpointed``
    with gradient checkpointing, the backward ``working`` set, and the peaks
    ``peak = saved + working`` / ``peak_checkpointed``. See the module docstring."""
    d, ffn, h, n, _ = _dims(spec)
    a = 4 if precision.startswith("32") or precision.startswith("64") else 2
    S, L, T = tokens.sequence, tokens.text, tokens.target
    per_block = S * d * (48 + 10 * a) + 2 * a * S * ffn + 8 * S * h + 32 * S + L * d * (4 + 6 * a)
    if attention_backend in MATH_BACKENDS:
        per_block += h * S * S * a
    stream = S * d * a + 8 * S * (d // h)
    head = T * d * (8 + a)
    working = 12 * S * d
    saved = n * per_block + stream + head
    checkpointed = n * S * d * a + stream + per_block
    return {
        "per_block": per_block,
        "saved": saved,
        "saved_checkpointed": checkpointed,
        "working": working,
        "peak": saved + working,
        "peak_checkpointed": checkpointed + working,
        "activation_dtype_bytes": a,
    }
