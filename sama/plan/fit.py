"""Memory per device under each parallel strategy, verdicts, micro-batch and throughput.

Bytes per device, for ``P`` parameters of which ``T`` train, ``m`` bytes per master weight
(4, or 2 under ``bf16-true`` / ``16-true``), a world of ``W = devices x nodes`` ranks and a
shard group ``G`` (1 for DDP, ``W`` for FSDP full shard, ``devices`` for hybrid shard)::

    weights     P m / G
    gradients   T m / G
    optimizer   2 T m / G                  AdamW exp_avg + exp_avg_sq in the master dtype
    EMA copy    P m / G  (EMAWeightAveraging: every weight) or T m / G (ShardedEMA: the
                trained ones), counted when the config has one
    compute     mixed precision: 2 T, autocast's bf16 copies of the trained weights, cached
                until the end of the forward (DDP and FSDP2 alike: sama.fsdp gathers fp32
                units and autocast casts them); FSDP adds the gathered units,
                (2 x largest block + non-block parameters) x m (current + prefetched)
    encoders    the frozen codec / text / semantic encoders, on every device
    activations micro-batch x per-sample peak (sama.plan.costs.activation_bytes)
    reserve     2 GiB (CUDA context, NCCL and allocator slack)

CPU offload (FSDP full shard + ``cpu_offload``) keeps weights, gradients and optimizer states in
host memory (reported as ``host_bytes`` per device) and only the gathered units on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sama.lora import DEFAULT_TARGET_MODULES, SAMA_MODULES

__all__ = [
    "GIB",
    "RESERVE_BYTES",
    "STRATEGIES",
    "StrategyMemory",
    "lora_trainable",
    "memory_for",
    "parse_bytes",
]

GIB = 1024**3
RESERVE_BYTES = 2 * GIB
#: Strategy keys in report order, with their display names.
STRATEGIES: dict[str, str] = {
    "ddp": "DDP",
    "fsdp_full": "FSDP full shard",
    "fsdp_hybrid": "FSDP hybrid shard",
    "fsdp_offload": "FSDP full shard + CPU offload",
}


def parse_bytes(text: str | float | int) -> int:
    """``"80GiB"``, ``"141GB"`` (10^9), ``"80"`` (GiB) -> bytes."""
    if isinstance(text, (int, float)):
        return int(float(text) * GIB)
    value = str(text).strip()
    units = {"tib": 1024**4, "gib": GIB, "mib": 1024**2, "tb": 10**12, "gb": 10**9, "mb": 10**6}
    for unit, scale in units.items():
        if value.lower().endswith(unit):
            return int(float(value[: -len(unit)]) * scale)
    try:
        return int(float(value) * GIB)
    except ValueError:
        raise ValueError(
            f"sama plan: cannot read memory size {text!r}; write e.g. 80GiB or 141GB"
        ) from None


def master_bytes(precision: str) -> int:
    """Bytes of a stored weight / gradient / optimizer value under a Lightning precision."""
    return 2 if precision in ("bf16-true", "16-true", "bf16", "16") else 4


def compute_bytes(precision: str) -> int:
    """Bytes of a weight as the matmuls see it."""
    return 4 if precision.startswith("32") or precision.startswith("64") else 2


def lora_trainable(model: nn.Module, rank: int, targets: tuple[str, ...] | None = None) -> int:
    """Trainable parameters LoRA of ``rank`` would give ``model`` (a plain SamaTransformer):
    ``rank x (in + out)`` per targeted ``nn.Linear`` in ``wan``, plus the SAMA modules."""

    targets = targets or DEFAULT_TARGET_MODULES
    adapters = 0
    for name, module in model.wan.named_modules():
        if isinstance(module, nn.Linear) and any(
            name == t or name.endswith("." + t) for t in targets
        ):
            adapters += rank * (module.in_features + module.out_features)
    sama = sum(p.numel() for n in SAMA_MODULES for p in getattr(model, n).parameters())
    return adapters + sama


@dataclass
class StrategyMemory:
    """Bytes per device of one strategy (``items``) for a micro-batch, and the verdict."""

    strategy: str
    shard: int
    items: dict[str, int]
    host_bytes: int
    static: int
    per_sample: int
    micro_batch: int
    total: int
    capacity: int
    max_micro_batch: int
    max_tokens: int = 0
    verdict: str = ""
    suggestions: list[str] = field(default_factory=list)

    @property
    def spare(self) -> int:
        return self.capacity - self.total

    @property
    def fits(self) -> bool:
        return self.spare >= 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "name": STRATEGIES[self.strategy],
            "shard_group": self.shard,
            "bytes": dict(self.items),
            "host_bytes": self.host_bytes,
            "total_bytes": self.total,
            "capacity_bytes": self.capacity,
            "spare_bytes": self.spare,
            "fits": self.fits,
            "micro_batch": self.micro_batch,
            "max_micro_batch": self.max_micro_batch,
            "max_tokens_at_micro_batch_1": self.max_tokens,
            "verdict": self.verdict,
        }


def memory_for(
    strategy: str,
    *,
    params: dict[str, int],
    trainable: int,
    precision: str,
    devices: int,
    nodes: int,
    ema: str,
    encoders: int,
    per_sample: int,
    micro_batch: int,
    capacity: int,
) -> StrategyMemory:
    """Bytes per device of ``strategy`` (a :data:`STRATEGIES` key); see the module docstring."""
    world = devices * nodes
    shard = {"ddp": 1, "fsdp_full": world, "fsdp_hybrid": devices, "fsdp_offload": world}[strategy]
    m, c = master_bytes(precision), compute_bytes(precision)
    total_p = params["total"]
    ema_params = {"all": total_p, "trainable": trainable}.get(ema, 0)
    states = {
        "weights": total_p * m // shard,
        "gradients": trainable * m // shard,
        "optimizer": 2 * trainable * m // shard,
        "ema": ema_params * m // shard,
    }
    host = 0
    if strategy == "fsdp_offload":
        host = states["weights"] + states["gradients"] + states["optimizer"]
        states = {key: 0 for key in states}
        states["ema"] = ema_params * m // shard
    compute = 2 * trainable if c == 2 and m == 4 else 0
    if strategy != "ddp":
        compute += (2 * params["largest_block"] + total_p - params["blocks"]) * m
    items = {
        **states,
        "compute_copies": compute,
        "encoders": encoders,
        "reserve": RESERVE_BYTES,
    }
    static = sum(items.values())
    items["activations"] = per_sample * micro_batch
    total = static + items["activations"]
    room = capacity - static
    max_mb = max(0, room // per_sample) if per_sample else 0
    return StrategyMemory(
        strategy=strategy,
        shard=shard,
        items=items,
        host_bytes=host,
        static=static,
        per_sample=per_sample,
        micro_batch=micro_batch,
        total=total,
        capacity=capacity,
        max_micro_batch=int(max_mb),
    )
