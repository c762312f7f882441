"""'What fits where' for docs/scaling.md: sama plan's verdicts for Wan2.1-1.3B and -14B.

For the shipped SFT configs (InstructionEditing, 81 frames at 480x832 with an 81-frame
source: 65,585 tokens; bf16-mixed, gradient checkpointing, torch SDPA), on 1 x 80 GB,
8 x 80 GB and 1 x 141 GB, full fine-tune and LoRA rank 16 / 64, under DDP, FSDP full shard and
FSDP + CPU offload; plus the longest sequence that fits at micro-batch 1 (beyond it, context
parallelism is needed). EMA as in the config (the 14B configs: ShardedEMA of the trained
weights).

    .venv/bin/python benchmarks/plan_scaling.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sama.plan import describe_run, load_fit_config, make_plan  # noqa: E402
from sama.plan.fit import GIB  # noqa: E402

CONFIGS = {"1.3B": "configs/wan2.1-1.3b/sft.yaml", "14B": "configs/wan2.1-14b/sft.yaml"}
MACHINES = [("1x80GB", 1, 80 * GIB), ("8x80GB", 8, 80 * GIB), ("1x141GB", 1, 141 * 10**9)]
STRATEGIES = [("ddp", "DDP"), ("fsdp_full", "FSDP"), ("fsdp_offload", "FSDP+offload")]


def _cell(strategy: dict) -> str:
    gib = strategy["spare_bytes"] / GIB
    mark = "fits" if strategy["fits"] else "no"
    return f"{mark} ({gib:+.0f})"


def main() -> int:
    print(
        "verdict per device (GiB spare, + / missing, -) for one 65,585-token sample; "
        "max tokens = longest sequence at micro-batch 1"
    )
    header = f"{'model':<6} {'training':<9} {'machine':<8}"
    for _, name in STRATEGIES:
        header += f" {name:>14}"
    header += f" {'max tokens FSDP':>16} {'max tokens offload':>19}"
    print(header)
    for size, config in CONFIGS.items():
        run = describe_run(load_fit_config(str(ROOT / config)), config)
        for training, rank in (("full", None), ("LoRA r16", 16), ("LoRA r64", 64)):
            for machine, devices, capacity in MACHINES:
                plan = make_plan(run, capacity=capacity, devices=devices, lora_rank=rank)
                strategies = plan["strategies"]
                row = f"{size:<6} {training:<9} {machine:<8}"
                for key, _ in STRATEGIES:
                    row += f" {_cell(strategies[key]):>14}"
                row += f" {strategies['fsdp_full']['max_tokens_at_micro_batch_1']:>16,}"
                row += f" {strategies['fsdp_offload']['max_tokens_at_micro_batch_1']:>19,}"
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
