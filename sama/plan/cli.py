"""``sama plan --config CFG [--devices N] [--nodes M] [--gpu-memory 80GiB] [fit overrides]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sama.cli import SamaCLI
from sama.plan.arch import describe_run
from sama.plan.fit import GIB, STRATEGIES, parse_bytes
from sama.plan.planner import DEFAULT_PEAK_TFLOPS, make_plan

__all__ = ["load_fit_config", "plan_main", "format_plan"]


def load_fit_config(config: str | list[str], overrides: list[str] | None = None) -> Any:
    """Parse ``config`` (one YAML or several, later ones on top, as repeated ``--config``) and
    ``--a.b=c`` overrides with SamaCLI's parser, instantiating nothing."""

    class _ParseOnly(SamaCLI):
        def _parse_ckpt_path(self) -> None:
            pass

        def _set_seed(self) -> None:
            pass

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    saved = sys.argv
    sys.argv = saved[:1]  # the parser reads args only; keep LightningCLI from eyeing sys.argv
    try:
        configs = [config] if isinstance(config, str) else list(config)
        args = [item for path in configs for item in ("--config", path)]
        cli = _ParseOnly(args=[*args, *(overrides or [])], run=False)
    finally:
        sys.argv = saved
    return cli.config


def _n(value: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _g(value: float) -> str:
    return f"{value / GIB:.2f}"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as readable tables."""
    run, params = plan["run"], plan["parameters"]
    out = [
        f"sama plan: {plan['config']}",
        f"model: {plan['model']['origin']}",
        f"run: {run['devices']} device(s) x {run['nodes']} node(s), {run['precision']}, "
        f"{run['strategy']}{' ' + run['sharding'] if run['sharding'] else ''}, gradient "
        f"checkpointing {'on' if run['gradient_checkpointing'] else 'off'}, attention "
        f"{run['attention_backend']}, EMA {run['ema'] or 'off'}"
        f"{', LoRA rank ' + str(run['lora']['rank']) if run['lora'] else ''}, "
        f"{_g(run['capacity_bytes'])} GiB per device",
        f"parameters: total {params['total']:,}  trainable {params['trainable']:,}  "
        f"(SAMA modules {params['sama']:,}); frozen encoders "
        + ", ".join(f"{k} {_g(v)} GiB" for k, v in plan["encoders_bytes"].items()),
        "",
        "tokens, FLOPs and activations per sample",
        f"  {'bucket':<48} {'src':>6} {'sem':>4} {'tgt':>6} {'text':>4} {'linear':>8} "
        f"{'attn':>8} {'train':>8} {'act GiB':>8} {'ckpt GiB':>8}",
    ]
    for b in plan["buckets"]:
        t, f, a = b["tokens"], b["flops"], b["activations"]
        out.append(
            f"  {b['shape']:<48} {t['source']:>6} {t['semantic']:>4} {t['target']:>6} "
            f"{t['text']:>4} {_n(f['linear']):>8} {_n(f['attention']):>8} "
            f"{_n(f['training']):>8} {_g(a['peak']):>8} {_g(a['peak_checkpointed']):>8}"
        )
    out += ["", f"memory per device (GiB) for {plan['worst_bucket']}"]
    cols = ["weights", "gradients", "optimizer", "ema", "compute_copies", "encoders", "reserve"]
    head = "".join(f"{c[:9]:>10}" for c in cols)
    out.append(f"  {'strategy':<30}{head}{'acts':>9}{'total':>9}{'max mb':>7}  verdict")
    for s in plan["strategies"].values():
        cells = "".join(f"{_g(s['bytes'][c]):>10}" for c in cols)
        out.append(
            f"  {STRATEGIES[s['strategy']]:<30}{cells}{_g(s['bytes']['activations']):>9}"
            f"{_g(s['total_bytes']):>9}{s['max_micro_batch']:>7}  {s['verdict']}"
        )
        if s["host_bytes"]:
            out.append(f"  {'':<30}host memory per device: {_g(s['host_bytes'])} GiB")
    if plan["throughput"]:
        tp = plan["throughput"]
        out += [
            "",
            f"throughput at {tp['achieved_tflops_per_device']:.0f} TFLOP/s per device "
            f"(MFU {tp['mfu']:.1%} of {tp['peak_tflops']:.0f}), {tp['world_size']} device(s)",
        ]
        for row in tp["per_bucket"]:
            out.append(
                f"  {row['shape']:<48} {row['step_seconds']:8.2f} s/step "
                f"{row['samples_per_day']:12,.0f} samples/day"
            )
    out += ["", "formulas:", *(f"  {k}: {v}" for k, v in plan["formulas"].items())]
    return "\n".join(out)


def plan_main(argv: list[str]) -> int:
    """``sama plan``: memory, FLOPs and fit of the run a config describes (no weights loaded)."""
    parser = argparse.ArgumentParser(
        prog="sama plan",
        description=plan_main.__doc__,
        epilog="Other --section.key=value options are passed to the config, as for sama fit.",
    )
    parser.add_argument(
        "--config", required=True, action="append", help="a sama fit YAML (repeatable)"
    )
    parser.add_argument("--devices", type=int, default=None, help="devices per node")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--gpu-memory", default="80GiB", help="memory per device (80GiB, 141GB)")
    parser.add_argument("--lora-rank", type=int, default=None, help="estimate a LoRA run")
    parser.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation, 0-1")
    parser.add_argument("--tflops", type=float, default=None, help="measured TFLOP/s per device")
    parser.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--")]
    if bad:
        parser.error(f"unexpected argument(s) {bad}; overrides look like --model.lr=1e-4")
    try:
        run = describe_run(load_fit_config(args.config, overrides), " + ".join(args.config))
        plan = make_plan(
            run,
            capacity=parse_bytes(args.gpu_memory),
            devices=args.devices,
            nodes=args.nodes,
            lora_rank=args.lora_rank,
            mfu=args.mfu,
            tflops=args.tflops,
            peak_tflops=args.peak_tflops,
        )
    except ValueError as error:
        print(f"sama plan: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(plan, indent=1) if args.json else format_plan(plan))
    return 0
