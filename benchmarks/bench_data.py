"""Can the data streams feed the training step? Samples/s delivered against samples/s consumed.

For each tiny run config (``configs/tiny/*.yaml`` that include a part) and each stream its task
mix reads, measured side by side in one run:

- **delivered**: samples/s the config's ``SamaDataModule`` train loader yields with 0 and 2
  dataloader workers, reading that stream only (the config's tasks of that stream, in their
  weights; the config's datasets, batch size and seed). One loader per row: ``--warmup``
  batches are dropped (worker start-up, footage decode caches), then ``--repeats`` windows of
  ``--batches`` batches are timed back to back; the median window is reported.
- **demand**: samples/s the training step consumes: ``trainer.fit`` of the config's
  ``SamaModule`` (built by ``SamaCLI``, ``init_from`` off: random weights cost the same) on the
  very batches the 0-worker loader delivered, pre-collated in memory, so the step does no data
  work. A callback times ``on_train_batch_start`` -> ``on_train_batch_end`` (forward + backward +
  gradient clipping + AdamW + scheduler); the first step is dropped and the median of the next
  ``--steps`` is reported. The bare trainer has no logger, checkpointing or EMA callback, so
  the step is, if anything, faster than in a real run (a stricter demand).

Both sides run alone on the machine, one after the other (in training they share its cores).
Target: ratio = delivered / demand >= 3 for every row; exits 1 when a row misses it.

Run: ``python benchmarks/bench_data.py [--configs pretrain sft ...] [--workers 0 2]
[--batches 4] [--repeats 3] [--warmup 2] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

TINY = ROOT / "configs" / "tiny"
TARGET = 3.0

# ``SamaCLI`` is imported lazily (in :func:`build`) so ``--help`` stays fast.


@dataclass
class Row:
    config: str
    stream: str
    batch_size: int
    workers: int
    delivered: float
    demand: float

    @property
    def ratio(self) -> float:
        return self.delivered / self.demand


def tiny_configs() -> list[str]:
    """Names of the tiny run configs: those that include a part (overlays are left out)."""
    return sorted(
        path.stem
        for path in TINY.glob("*.yaml")
        if isinstance(data := yaml.safe_load(path.read_text()), dict) and "config" in data
    )


def build(config: str) -> tuple[pl.LightningModule, Any, dict[str, Any]]:
    """The config's module and datamodule as ``sama fit`` builds them, and its trainer settings."""
    from sama.cli import SamaCLI

    path = TINY / f"{config}.yaml"
    cli = SamaCLI(
        args=[
            f"--config={path}",
            "--model.init_from=null",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
        ],
        run=False,
        save_config_callback=None,
    )
    trainer = cli.config["trainer"]
    settings = {key: trainer[key] for key in ("precision", "gradient_clip_val")}
    return cli.model, cli.datamodule, settings


def stream_sampler(sampler: Any, stream: str) -> Any:
    """The config's task sampler reduced to the tasks that read ``stream`` (same weights, seed)."""
    from tasks.sampler import TaskSampler

    weights = {
        name: weight
        for name, weight in sampler.weights.items()
        if weight > 0 and sampler.stream_of(name) == stream
    }
    return TaskSampler(weights, sampler.streams, seed=sampler.seed)


def batch_samples(batch: dict[str, Any]) -> int:
    """Samples in a collated batch (the leading size of its first tensor)."""
    return next(int(v.shape[0]) for v in batch.values() if isinstance(v, torch.Tensor))


def delivery(
    datamodule: Any, workers: int, warmup: int, batches: int, repeats: int
) -> tuple[list[float], list[dict[str, Any]]]:
    """Samples/s of ``repeats`` back-to-back windows of ``batches`` batches after ``warmup``,
    and every batch read (warm-up included)."""
    datamodule.num_workers = workers  # a new loader continues after the last one's batches
    iterator: Iterator[dict[str, Any]] = iter(datamodule.train_dataloader())
    read = [next(iterator) for _ in range(warmup)]
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        window = [next(iterator) for _ in range(batches)]
        seconds = time.perf_counter() - began
        rates.append(sum(batch_samples(b) for b in window) / seconds)
        read += window
    del iterator  # stops the worker processes
    return rates, read


class _StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.samples: list[int] = []
        self._began = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, i: int) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        self.seconds.append(time.perf_counter() - self._began)
        self.samples.append(batch_samples(batch))


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def demand(
    module: pl.LightningModule, settings: dict[str, Any], read: Sequence[dict[str, Any]]
) -> list[float]:
    """Samples/s of each training step on the batches ``read`` but the first (a warm-up)."""
    timer = _StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(read),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
        **settings,
    )
    loader = DataLoader(list(read), batch_size=None, collate_fn=_as_is)  # no data work
    trainer.fit(module, train_dataloaders=loader)
    return [n / s for n, s in zip(timer.samples[1:], timer.seconds[1:], strict=True)]


def measure(config: str, workers: Sequence[int], args: argparse.Namespace) -> list[Row]:
    module, datamodule, settings = build(config)
    sampler = module.task_sampler
    rows = []
    for stream in sorted(sampler.active_streams()):
        datamodule.set_task_sampler(stream_sampler(sampler, stream))
        delivered, read = {}, None
        for count in sorted(set(workers) | {0}):
            rates, batches = delivery(datamodule, count, args.warmup, args.batches, args.repeats)
            delivered[count] = statistics.median(rates)
            read = batches if count == 0 else read
        steps = read[: args.steps + 1]
        consumed = statistics.median(demand(module, settings, steps))
        size = datamodule.streams[stream].batch_size
        rows += [Row(config, stream, size, count, delivered[count], consumed) for count in workers]
    return rows


def quiet() -> None:
    """Keep Lightning's chatter out of the table (the data's own warnings stay)."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"configs: {' '.join(tiny_configs())}",
    )
    parser.add_argument("--configs", nargs="+", default=None, help="default: all tiny configs")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--batches", type=int, default=4, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median)")
    parser.add_argument("--warmup", type=int, default=2, help="batches dropped first")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (median)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet()
    configs = args.configs or tiny_configs()

    print(f"machine: {machine()}")
    print(
        f"delivered: median of {args.repeats} windows of {args.batches} batches after "
        f"{args.warmup} warm-up batches; demand: median of {args.steps} steps after 1 warm-up "
        f"step; target delivered / demand >= {TARGET:g}"
    )
    header = (
        f"| {'config':20s} | {'stream':11s} | batch | workers | delivered/s | demand/s | ratio |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    rows: list[Row] = []
    for config in configs:
        for row in measure(config, args.workers, args):
            rows.append(row)
            mark = "" if row.ratio >= TARGET else " <- below target"
            print(
                f"| {row.config:20s} | {row.stream:11s} | {row.batch_size:5d} | {row.workers:7d} "
                f"| {row.delivered:11.1f} | {row.demand:8.1f} | {row.ratio:5.1f} |{mark}",
                flush=True,
            )
    missed = [row for row in rows if row.ratio < TARGET]
    worst = min(rows, key=lambda row: row.ratio)
    print(
        f"worst: {worst.config} {worst.stream} {worst.workers} workers at {worst.ratio:.1f}x; "
        + (f"{len(missed)} row(s) below {TARGET:g}x" if missed else f"all rows >= {TARGET:g}x")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
