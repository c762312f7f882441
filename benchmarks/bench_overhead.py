"""Framework overhead: a ``sama fit`` step against a bare PyTorch loop over the same work.

Both sides train the same ``SamaModule`` (built from a tiny config by ``SamaCLI``, exactly as
``sama fit --config CONFIG`` builds it) on the same pre-collated micro-batches, replayed from
memory so that data loading is not part of either side (``bench_data.py`` measures it):

* **sama fit**: ``Trainer.fit`` with the config's trainer, callbacks (checkpointing, EMA
  weight averaging, LR monitor), TensorBoard logger and progress bar; the module's
  ``training_step`` (task dispatch, per-sample ``task.prepare`` with per-sample generators,
  flow losses, logging), gradient clipping, AdamW and the LR scheduler. A step is the time
  between consecutive ``on_train_batch_start`` calls.
* **bare loop**: one ``task.prepare`` per micro-batch with one generator, the module's
  ``compute_losses`` (encoders + transformer + flow-matching loss), ``backward``, gradient
  clipping, ``AdamW.step`` and ``zero_grad``; nothing else.

Both sides train one module (the cost of a step does not depend on the weights' values), after
one untimed pass of the bare loop over the batches that fills the encoders' caches (text
embeddings, semantic features) for both. Blocks of steps alternate between the two sides (repeats), and the table shows the median
seconds per step over every timed step of each side and their ratio (target at most 1.10x).

    python benchmarks/bench_overhead.py [--steps 10] [--repeats 5] [--configs tiny-pretrain]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from sama.cli import SamaCLI
from sama.module import SamaModule

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

TARGET = 1.10

CONFIGS = {
    "tiny-pretrain": ("configs/tiny/pretrain.yaml", []),
    "tiny-editor-sft": ("configs/tiny/editor-sft.yaml", ["--model.init_from=null"]),
}


class StepClock(pl.Callback):
    """Records ``time.perf_counter()`` at the start of every training batch (and at the end of
    the last), so consecutive differences are whole steps as the Trainer runs them."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())


def build(config: str, extra: list[str], run_dir: Path, max_steps: int) -> SamaCLI:
    """The module, datamodule and trainer ``sama fit --config config`` would build, with the
    logger and checkpoints under ``run_dir`` and validation off (not part of a step)."""
    args = [
        f"--config={ROOT / config}",
        *extra,
        f"--trainer.max_steps={max_steps}",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
    ]
    return SamaCLI(args=args, run=False, save_config_callback=None)


def collect_batches(cli: SamaCLI, n: int) -> list[dict[str, Any]]:
    """The first ``n`` collated training micro-batches of the config's datamodule."""
    datamodule = cli.datamodule
    datamodule.set_task_sampler(cli.model.task_sampler)
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def bare_steps(module: SamaModule, batches: list[dict[str, Any]], clip: float) -> list[float]:
    """Seconds of each step of the bare loop over ``batches``."""
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=module.lr, weight_decay=module.weight_decay)
    module.train()
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        task = module._task_of(batch)
        generator = torch.Generator().manual_seed(i)
        sample = task.prepare(batch, generator)
        fm_loss, sem_loss = module.compute_losses(sample, generator)
        loss = fm_loss + module.semantic_weight * sem_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def fit_steps(config: str, extra: list[str], module: SamaModule, batches: list, tmp: Path) -> list:
    """Seconds of each step of ``Trainer.fit`` (the config's trainer) over ``batches``."""
    cli = build(config, extra, tmp, max_steps=len(batches))
    clock = StepClock()
    cli.trainer.callbacks.append(clock)
    replay = DataLoader(batches, batch_size=None, shuffle=False, collate_fn=_as_is)
    cli.trainer.fit(module, train_dataloaders=replay)
    stamps = clock.stamps
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def measure(name: str, steps: int, repeats: int, warmup: int) -> dict[str, Any]:
    config, extra = CONFIGS[name]
    with tempfile.TemporaryDirectory(prefix="sama-bench-overhead-") as tmp:
        cli = build(config, extra, Path(tmp) / "build", max_steps=steps)
        batches = collect_batches(cli, steps + warmup)
        clip = float(cli.trainer.gradient_clip_val or 1.0)
        module: SamaModule = cli.model
        bare_steps(module, batches, clip)  # fills the encoders' caches for both sides
        bare, fit = [], []
        for r in range(repeats):
            bare += bare_steps(module, batches, clip)[warmup:]
            fit += fit_steps(config, extra, module, batches, Path(tmp) / f"fit{r}")[warmup:]
    batch_size = int(batches[0]["video"].shape[0]) if "video" in batches[0] else None
    return {
        "config": name,
        "batch": batch_size,
        "bare": statistics.median(bare),
        "fit": statistics.median(fit),
        "n": (len(bare), len(fit)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per block")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    rows = [measure(c, args.steps, args.repeats, args.warmup) for c in args.configs]
    print(f"machine: {machine()}; medians over {args.repeats} blocks of {args.steps} steps")
    print()
    print("| config | bare loop s/step | sama fit s/step | ratio |")
    print("|---|---|---|---|")
    ok = True
    for row in rows:
        ratio = row["fit"] / row["bare"]
        ok &= ratio <= TARGET
        print(f"| {row['config']} | {row['bare']:.3f} | {row['fit']:.3f} | {ratio:.3f}x |")
    print()
    print(f"target: sama fit / bare <= {TARGET:.2f}x: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
