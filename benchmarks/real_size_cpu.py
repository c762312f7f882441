"""A real-size run on CPU: ``sama fit`` for 3 steps on a random-weight Wan2.1-T2V-1.3B.

The run goes through the real config path: ``configs/wan2.1-1.3b/sft.yaml`` (the 1.3B
transformer read from a diffusers folder, the Wan VAE of that folder, LoRA rank 16 as in
``configs/wan2.1-14b/sft-lora.yaml``, gradient checkpointing, EMA 0.9998) with these changes
for a 2-core, 24 GB CPU machine:

- bf16-true on one CPU process instead of bf16-mixed DDP on 8 GPUs;
- umT5 and SigLIP are random, reduced configs of the real classes (umT5-XXL alone is 5.7B
  parameters, 11 GB in bf16; the reduced umT5 keeps ``d_model = 4096`` so the transformer's
  text projection is the real one, the reduced SigLIP keeps width 1152 and 14 px patches);
- data: SynthEdit pairs at 64 x 64, 5 frames, batch 1 (the real config reads your files).

Weights come from ``benchmarks/make_random_wan.py`` (written once into ``--workdir``, about
2.8 GB in bf16). The child process records every training step's wall time and its peak RSS;
``sama plan`` is run on the same config, with this CPU's measured bf16 matmul throughput as
``--tflops``, and the table puts measured and planned figures side by side::

    .venv/bin/python benchmarks/real_size_cpu.py --workdir /tmp/sama-real-size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LORA = {
    "rank": 16,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"],
}
UMT5_REDUCED = {
    "vocab_size": 260,  # the byte-level fallback tokenizer of UMT5TextEncoder(config=...)
    "d_model": 4096,  # umT5-XXL's width: the transformer's text embedding is unchanged
    "d_kv": 64,
    "d_ff": 1024,
    "num_layers": 2,
    "num_heads": 8,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
}
SIGLIP_REDUCED = {  # so400m's width and patch size, 2 of its 27 layers, 224 px
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 2,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}


def _pairs(cls: str, split: str, num: int) -> dict[str, Any]:
    init = {"num": num, "size": [64, 64], "frames": 5, "split": split}
    return {"class_path": f"datamodules.{cls}", "init_args": init}


def run_config(workdir: Path, steps: int) -> dict[str, Any]:
    """The overrides on top of ``configs/wan2.1-1.3b/sft.yaml`` (a YAML mapping)."""
    wan = str(workdir / "wan-1.3b")
    return {
        "config": str(ROOT / "configs" / "wan2.1-1.3b" / "sft.yaml"),
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "trainer.strategy": "auto",
        "trainer.precision": "bf16-true",
        "trainer.max_steps": steps,
        "trainer.limit_val_batches": 0,
        "trainer.enable_progress_bar": False,
        "trainer.logger.init_args.save_dir": str(workdir / "run"),
        "model.pretrained": wan,
        "model.init_from": None,
        "model.codec.init_args.path": wan,
        "model.text_encoder": {
            "class_path": "sama.encoders.UMT5TextEncoder",
            "init_args": {"config": UMT5_REDUCED, "max_length": 64, "dtype": "bfloat16"},
        },
        "model.semantic_encoder": {
            "class_path": "sama.encoders.SiglipSemanticEncoder",
            "init_args": {"config": SIGLIP_REDUCED, "dtype": "bfloat16"},
        },
        "model.lora": LORA,
        "model.gradient_checkpointing": True,
        "data": {
            "class_path": "datamodules.SamaDataModule",
            "init_args": {
                "video_pairs": [_pairs("SynthEditPairs", "train", 64)],
                "image_pairs": [_pairs("SynthEditImagePairs", "train", 64)],
                "batch_size": 1,
                "image_batch_size": 1,
                "num_workers": 0,
            },
        },
    }


class StepTimer:
    """Lightning callback (built in the child): wall time of every training step, the RSS
    high-water mark, and the LoRA base weights' checksum before and after training."""

    def __init__(self, out: Path) -> None:
        import lightning.pytorch as pl

        outer = self

        class _Callback(pl.Callback):
            def on_train_start(self, trainer: Any, module: Any) -> None:
                outer.base_before = _base_checksum(module)
                outer.rss_start = _max_rss_bytes()
                outer.rss_now_start = _rss_bytes()

            def on_train_batch_start(self, *args: Any) -> None:
                outer.start = time.perf_counter()

            def on_train_batch_end(self, *args: Any) -> None:
                outer.steps.append(time.perf_counter() - outer.start)

            def on_train_end(self, trainer: Any, module: Any) -> None:
                record = {
                    "step_seconds": outer.steps,
                    "global_step": trainer.global_step,
                    "peak_rss_bytes": _max_rss_bytes(),
                    "peak_rss_bytes_before_training": outer.rss_start,
                    "rss_bytes_at_training_start": outer.rss_now_start,
                    "rss_bytes_at_training_end": _rss_bytes(),
                    "base_unchanged": _base_checksum(module) == outer.base_before,
                    "trainable_parameters": sum(
                        p.numel() for p in module.parameters() if p.requires_grad
                    ),
                    "parameters": sum(p.numel() for p in module.model.parameters()),
                }
                out.write_text(json.dumps(record, indent=1) + "\n")

        self.steps: list[float] = []
        self.start = 0.0
        self.base_before = 0.0
        self.rss_start = 0
        self.rss_now_start = 0
        self.callback = _Callback()


def _base_checksum(module: Any) -> float:
    """Sum of the frozen transformer weights (the LoRA base), in float64."""
    with torch.no_grad():
        return float(
            sum(
                p.detach().double().sum()
                for n, p in module.model.named_parameters()
                if not p.requires_grad and "lora_" not in n
            )
        )


def _rss_bytes() -> int:
    """The current resident set size (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def child(config: Path, out: Path) -> int:
    """Run ``sama fit --config CONFIG`` in this process with a :class:`StepTimer`."""
    from sama.cli import SamaCLI

    timer = StepTimer(out)
    SamaCLI(
        args=["fit", f"--config={config}"],
        trainer_defaults={"callbacks": [timer.callback]},
        save_config_kwargs={"overwrite": True},
    )
    return 0


def bf16_tflops(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's bf16 matmul throughput (median TFLOP/s of ``size``-square products)."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e12


def plan(config: Path, tflops: float) -> dict[str, Any]:
    """``sama plan --json`` for the run config (one device of this machine's memory)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    command = [sys.executable, "-m", "sama", "plan", "--config", str(config), "--devices", "1"]
    command += ["--gpu-memory", f"{memory / 2**30:.1f}GiB", "--tflops", f"{tflops:.4f}", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"real_size_cpu: sama plan failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sama-real-size"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]))
    import yaml

    from benchmarks.make_random_wan import write_random_wan

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    wan = work / "wan-1.3b"
    if not (wan / "transformer" / "config.json").is_file() or not (wan / "vae").is_dir():
        print(f"writing random Wan2.1-1.3B (bf16) + VAE to {wan}", flush=True)
        write_random_wan(wan, "1.3B", dtype="bfloat16")
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(work, args.steps), sort_keys=False))
    out = work / "measured.json"
    out.unlink(missing_ok=True)
    run_dir = work / "run"
    if run_dir.exists():  # a fresh run every time: the figures are of these steps
        import shutil

        shutil.rmtree(run_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(config), str(out)], env=env, cwd=ROOT
    )
    wall = time.monotonic() - start
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"real_size_cpu: sama fit failed (exit {done.returncode})")
    measured = json.loads(out.read_text())
    tflops = bf16_tflops()
    planned = plan(config, tflops)
    steps = measured["step_seconds"]
    after_first = steps[1:] or steps
    strategies = planned["strategies"]
    fit = strategies.get(planned["run"]["strategy"]) or strategies["ddp"]  # single: DDP of 1
    buckets = {b["task"]: b for b in planned["throughput"]["per_bucket"]}
    edit = buckets.get("InstructionEditing", {})
    rows = [
        ("steps run", f"{measured['global_step']}", "-"),
        (
            "s/step, median of steps 2.. (plan: InstructionEditing bucket)",
            f"{statistics.median(after_first):.1f}",
            f"{edit.get('step_seconds', float('nan')):.1f} ({edit.get('shape', 'n/a')})",
        ),
        ("s/step, first step", f"{steps[0]:.1f}", "-"),
        (
            "peak RSS vs planned total (GiB)",
            f"{measured['peak_rss_bytes'] / 2**30:.2f}",
            f"{fit['total_bytes'] / 2**30:.2f}",
        ),
        (
            "peak RSS before training (GiB; loading)",
            f"{measured['peak_rss_bytes_before_training'] / 2**30:.2f}",
            "-",
        ),
        (
            "RSS during training vs planned without reserve (GiB)",
            f"{measured['rss_bytes_at_training_start'] / 2**30:.2f} .. "
            f"{measured['rss_bytes_at_training_end'] / 2**30:.2f}",
            f"{(fit['total_bytes'] - fit['bytes']['reserve']) / 2**30:.2f}",
        ),
        (
            "  of which planned weights / EMA / encoders (GiB)",
            "-",
            " / ".join(f"{fit['bytes'][k] / 2**30:.2f}" for k in ("weights", "ema", "encoders")),
        ),
        (
            "achieved TFLOP/s (plan FLOPs / measured s/step)",
            f"{edit.get('step_seconds', 0.0) * tflops / statistics.median(after_first):.4f}",
            f"{tflops:.3f} (--tflops: bf16 matmul peak)",
        ),
        ("planned activations (GiB)", "-", f"{fit['bytes']['activations'] / 2**30:.2f}"),
        ("transformer parameters", f"{measured['parameters']:,}", "-"),
        ("trainable (LoRA + SAMA modules)", f"{measured['trainable_parameters']:,}", "-"),
        ("LoRA base unchanged", str(measured["base_unchanged"]), "-"),
        ("whole run, wall (s)", f"{wall:.0f}", "-"),
    ]
    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"bf16 matmul {tflops:.3f} TFLOP/s (sama plan --tflops)\n"
    )
    print("| figure | measured | sama plan |")
    print("|---|---|---|")
    for name, value, predicted in rows:
        print(f"| {name} | {value} | {predicted} |")
    if args.json:
        record = {"measured": measured, "wall_s": wall, "tflops": tflops, "plan": planned}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if measured["global_step"] == args.steps and measured["base_unchanged"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
