"""``make_plan``: the whole ``sama plan`` report of a :class:`~sama.plan.arch.RunSpec` as a dict."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from sama.plan.arch import Bucket, RunSpec, build_meta_model, parameter_counts
from sama.plan.costs import Tokens, activation_bytes, bucket_tokens, flops
from sama.plan.fit import GIB, STRATEGIES, StrategyMemory, lora_trainable, memory_for

__all__ = ["make_plan", "DEFAULT_PEAK_TFLOPS"]

#: Dense bf16 peak of an H100 / H200 SXM (TFLOP/s), the default for ``--mfu``.
DEFAULT_PEAK_TFLOPS = 989.0


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _bucket_cost(run: RunSpec, bucket: Bucket, checkpointing: bool) -> dict[str, Any]:
    tokens = bucket_tokens(run.model, bucket)
    acts = activation_bytes(
        run.model, tokens, precision=run.precision, attention_backend=run.attention_backend
    )
    return {
        "bucket": asdict(bucket),
        "tokens": tokens.as_dict(),
        "flops": flops(run.model, tokens),
        "activations": acts,
        "per_sample": acts["peak_checkpointed" if checkpointing else "peak"],
    }


def _max_tokens(run: RunSpec, room: int, checkpointing: bool) -> int:
    """Largest sequence (target tokens, no source) whose per-sample peak fits in ``room`` bytes."""
    key = "peak_checkpointed" if checkpointing else "peak"

    def need(s: int) -> int:
        tokens = Tokens(0, 0, s, run.model.text_length)
        return activation_bytes(
            run.model, tokens, precision=run.precision, attention_backend=run.attention_backend
        )[key]

    if room <= 0 or need(1) > room:
        return 0
    lo, hi = 1, 2
    while need(hi) <= room and hi < 1 << 40:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= room else (lo, mid)
    return lo


def make_plan(
    run: RunSpec,
    *,
    capacity: int,
    devices: int | None = None,
    nodes: int | None = None,
    lora_rank: int | None = None,
    mfu: float | None = None,
    tflops: float | None = None,
    peak_tflops: float = DEFAULT_PEAK_TFLOPS,
) -> dict[str, Any]:
    """The plan of ``run`` on devices of ``capacity`` bytes (JSON-able dict).

    ``devices`` / ``nodes`` override the config's; ``lora_rank`` estimates a LoRA run of that
    rank (default target modules) on top of the config's own ``model.lora``; ``mfu`` (of
    ``peak_tflops``) or a measured ``tflops`` (model FLOPs per second per device) give the
    step time and samples per day.
    """
    run = replace(run, devices=devices or run.devices, nodes=nodes or run.nodes)
    lora = dict(run.lora) if run.lora else None
    if lora_rank:
        lora = {**(lora or {}), "rank": int(lora_rank), "alpha": float(lora_rank)}
    model = build_meta_model(run.model, lora)
    params = parameter_counts(model)
    trainable = params["trainable"]
    if run.semantic_weight == 0:  # SamaModule freezes the semantic projector and head
        frozen = sum(
            p.numel()
            for name in ("siglip_feat_mlp", "semantic_head")
            for p in getattr(model, name).parameters()
            if p.requires_grad
        )
        trainable -= frozen
    params["trainable"] = trainable
    params["frozen"] = params["total"] - trainable
    encoders = sum(run.model.encoders.values())

    ckpt = run.gradient_checkpointing
    buckets = [_bucket_cost(run, b, ckpt) for b in run.buckets]
    worst = max(buckets, key=lambda b: b["per_sample"] * b["bucket"]["batch"])

    def strategy(key: str, *, checkpointing: bool = ckpt, train: int = trainable) -> StrategyMemory:
        cost = _bucket_cost(run, Bucket(**worst["bucket"]), checkpointing)
        return memory_for(
            key,
            params=params,
            trainable=train,
            precision=run.precision,
            devices=run.devices,
            nodes=run.nodes,
            ema=run.ema,
            encoders=encoders,
            per_sample=cost["per_sample"],
            micro_batch=worst["bucket"]["batch"],
            capacity=capacity,
        )

    lora_64 = lora_trainable(model, 64) if not lora else None
    results = {}
    for key in STRATEGIES:
        mem = strategy(key)
        mem.max_tokens = _max_tokens(run, capacity - mem.static, ckpt)
        if mem.fits:
            mem.verdict = f"fits with {_gib(mem.spare)} to spare"
        else:
            tries = []
            if not ckpt and strategy(key, checkpointing=True).fits:
                tries.append("gradient checkpointing (--model.gradient_checkpointing=true)")
            for other in STRATEGIES:
                if other != key and list(STRATEGIES).index(other) > list(STRATEGIES).index(key):
                    if strategy(other).fits:
                        tries.append(STRATEGIES[other])
                        break
            if lora_64 is not None and strategy(key, train=lora_64).fits:
                tries.append("LoRA (--lora-rank 64)")
            if mem.max_micro_batch >= 1 and mem.micro_batch > 1:
                tries.append(f"micro-batch {mem.max_micro_batch} + gradient accumulation")
            if not tries:
                tries.append("context parallelism or more devices")
            mem.verdict = f"needs {_gib(-mem.spare)} more: try " + "; ".join(tries)
        results[key] = mem

    throughput = None
    achieved = tflops if tflops else (mfu * peak_tflops if mfu else None)
    if achieved:
        world = run.devices * run.nodes
        rows = []
        for cost in buckets:
            batch = cost["bucket"]["batch"]
            step = cost["flops"]["training"] * batch / (achieved * 1e12)
            rows.append(
                {
                    "task": cost["bucket"]["task"],
                    "shape": _shape(cost["bucket"]),
                    "step_seconds": step,
                    "samples_per_day": 86400 / step * batch * world,
                }
            )
        throughput = {
            "achieved_tflops_per_device": achieved,
            "mfu": achieved / peak_tflops,
            "peak_tflops": peak_tflops,
            "world_size": world,
            "per_bucket": rows,
        }
    return {
        "config": run.config_path,
        "model": {"origin": run.model.origin, "wan_config": run.model.wan_config},
        "run": {
            "precision": run.precision,
            "strategy": run.strategy,
            "sharding": run.sharding,
            "devices": run.devices,
            "nodes": run.nodes,
            "gradient_checkpointing": ckpt,
            "attention_backend": run.attention_backend,
            "ema": run.ema,
            "lora": lora,
            "capacity_bytes": capacity,
        },
        "parameters": params,
        "encoders_bytes": dict(run.model.encoders),
        "buckets": [{**b, "shape": _shape(b["bucket"])} for b in buckets],
        "worst_bucket": _shape(worst["bucket"]),
        "strategies": {k: v.as_dict() for k, v in results.items()},
        "throughput": throughput,
        "formulas": {
            "flops": "forward = linear + attention; linear = 2*n*(S*(6d^2+2dF)+2Ld^2) + "
            "embeddings + heads; attention = n*(4S^2 d + 4SLd); training = 3*forward - input "
            "grads of the first layers (+1 forward executed with gradient checkpointing); "
            "see sama/plan/costs.py",
            "activations": "per block = S d (48+10a) + 2aSF + 8Sh + 32S + Ld(4+6a); "
            "checkpointing keeps n*S*d*a + one block",
        },
    }


def _shape(bucket: dict[str, Any]) -> str:
    src = f" +src{bucket['source_frames']}f" if bucket["source_frames"] else ""
    return (
        f"{bucket['task']} {bucket['frames']}f {bucket['height']}x{bucket['width']}{src} "
        f"x{bucket['batch']}"
    )
