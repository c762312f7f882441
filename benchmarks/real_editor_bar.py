"""Does an editor meet the real-footage bar? Score it on the held-out real-footage split.

The bar of the shipped real-footage editor (issue 16, docs/results.md): on SynthEdit on real
footage, held-out split (carphone footage, never in training), the editor beats returning the
source by at least 6 dB edit-region PSNR on the global edits (``style``, ``tone``) and keeps
preservation PSNR at 25 dB or more on the local ones (``recolor``, ``replace``, ``remove``,
``add``). This runs ``sama test --config configs/eval/real-footage.yaml`` on an editor, or
reads a ``results.json`` it wrote, and prints both figures and the per-category table::

    python benchmarks/real_editor_bar.py --ckpt weights/real-editor --out runs/bench/real-footage
    python benchmarks/real_editor_bar.py --results runs/bench/real-footage/results.json

Means are over clips (each clip's PSNR, then the mean), as ``sama test`` reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from datamodules.synthedit.real_footage import REAL_CATEGORIES, REAL_LOCAL_CATEGORIES  # noqa: E402

GLOBAL_CATEGORIES: tuple[str, ...] = tuple(
    c for c in REAL_CATEGORIES if c not in REAL_LOCAL_CATEGORIES
)
GLOBAL_GAIN_DB = 6.0
"""Edit-region PSNR the editor must gain over returning the source, on global edits."""
LOCAL_PRESERVATION_DB = 25.0
"""Preservation PSNR the editor must keep on local edits."""


def mean_metric(
    samples: Sequence[dict[str, Any]], system: str, categories: Sequence[str], metric: str
) -> tuple[float | None, int]:
    """Mean of ``metric`` over the ``system``'s samples in ``categories`` (samples whose value
    is missing, e.g. preservation of a clip edited everywhere, are left out) and their count."""
    values = [
        float(s["metrics"][metric])
        for s in samples
        if s["system"] == system
        and s["category"] in categories
        and s["metrics"].get(metric) is not None
    ]
    return (sum(values) / len(values) if values else None), len(values)


def bar(results: dict[str, Any]) -> dict[str, Any]:
    """The two figures of the bar from a ``results.json`` and whether each holds."""
    samples = results["samples"]
    model, clips = mean_metric(samples, "model", GLOBAL_CATEGORIES, "edit_region_psnr")
    identity, _ = mean_metric(samples, "identity", GLOBAL_CATEGORIES, "edit_region_psnr")
    kept, local = mean_metric(samples, "model", REAL_LOCAL_CATEGORIES, "preservation_psnr")
    if model is None or identity is None or kept is None:
        raise SystemExit(
            "real_editor_bar: results.json needs model and identity samples of both global "
            f"({', '.join(GLOBAL_CATEGORIES)}) and local categories; score the real-footage split"
        )
    gain = model - identity
    return {
        "global_clips": clips,
        "global_edit_region": model,
        "global_identity": identity,
        "global_gain": gain,
        "global_ok": gain >= GLOBAL_GAIN_DB,
        "local_clips": local,
        "local_preservation": kept,
        "local_ok": kept >= LOCAL_PRESERVATION_DB,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: dict[str, Any]) -> str:
    """Markdown: the bar, then edit region (model, identity) and preservation per category."""
    figures = bar(results)
    lines = [
        "| bar | clips | editor | identity | difference | target | met |",
        "|---|---|---|---|---|---|---|",
        f"| global edits: edit-region PSNR | {figures['global_clips']} | "
        f"{figures['global_edit_region']:.2f} | {figures['global_identity']:.2f} | "
        f"**{figures['global_gain']:+.2f}** | +{GLOBAL_GAIN_DB:.0f} | "
        f"{'yes' if figures['global_ok'] else 'no'} |",
        f"| local edits: preservation PSNR | {figures['local_clips']} | "
        f"**{figures['local_preservation']:.2f}** | 100 | | {LOCAL_PRESERVATION_DB:.0f} | "
        f"{'yes' if figures['local_ok'] else 'no'} |",
        "",
        "| category | clips | edit region | identity | preservation |",
        "|---|---|---|---|---|",
    ]
    samples = results["samples"]
    for category in REAL_CATEGORIES:
        edit, clips = mean_metric(samples, "model", [category], "edit_region_psnr")
        if not clips:
            continue
        identity, _ = mean_metric(samples, "identity", [category], "edit_region_psnr")
        kept, _ = mean_metric(samples, "model", [category], "preservation_psnr")
        lines.append(f"| {category} | {clips} | {_fmt(edit)} | {_fmt(identity)} | {_fmt(kept)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="editor to score (export dir or Lightning checkpoint)")
    source.add_argument("--results", help="a results.json of the real-footage split")
    parser.add_argument("--out", default="runs/bench/real-footage", help="sama test output dir")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per edit")
    args = parser.parse_args(argv)
    print(machine())
    if args.ckpt:
        command = [
            sys.executable,
            "-m",
            "sama",
            "test",
            "--config=configs/eval/real-footage.yaml",
            f"--ckpt_path={args.ckpt}",
            f"--data.init_args.output_dir={args.out}",
            f"--data.init_args.sampling.steps={args.steps}",
            "--trainer.enable_progress_bar=false",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        print("$ " + " ".join(command[2:]), flush=True)
        if subprocess.run(command, env=env, cwd=ROOT).returncode != 0:
            raise SystemExit("real_editor_bar: sama test failed")
        path = Path(args.out) / "results.json"
    else:
        path = Path(args.results)
    if not path.is_file():
        raise SystemExit(f"real_editor_bar: {path} does not exist; run sama test first")
    results = json.loads(path.read_text())
    config = results.get("config", {})
    print(
        f"{path}: {config.get('name')}, {config.get('samples')} clips, "
        f"{config.get('steps')} sampler steps, checkpoint_sha256 {results.get('checkpoint_sha256')}"
    )
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
