"""Write SynthEdit to disk in the paired-edit manifest format, and the ``sama synth`` command.

Layout under ``out``::

    videos/<id>_source.mp4, videos/<id>_target.mp4   H.264, crf 10 by default
    masks/<id>.npz                                   bool (T, H, W) under key "mask" (lossless)
    manifest.jsonl                                   one JSON object per pair, paths relative
    synthedit.json                                   the generator settings
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datamodules.synthedit.generator import SPLITS, SynthEditGenerator
from datamodules.synthedit.scenes import CATEGORIES
from sama.io import write_video


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_dataset(
    out: str | os.PathLike[str],
    num: int,
    seed: int = 0,
    split: str = "train",
    size: tuple[int, int] = (64, 64),
    frames: int = 17,
    fps: float = 8.0,
    overwrite: bool = False,
    categories: Sequence[str] | None = None,
    crf: int = 10,
    progress: bool = False,
) -> Path:
    """Generate samples ``0 .. num - 1`` of a SynthEdit split and write them under ``out``.

    Each manifest line is ``{"id", "source", "target", "instruction", "category", "mask",
    "source_caption", "target_caption"}`` with paths relative to the manifest. The manifest is
    written last and atomically, so a folder with a manifest holds every file it names.

    Args:
        out: destination folder; created if missing, refused if not empty unless ``overwrite``
            (files of the same names are then replaced, other files are left alone).
        num: number of pairs (``>= 1``).
        seed, split, size, frames, categories: see :class:`SynthEditGenerator`.
        fps: frame rate of the written videos.
        crf: x264 constant rate factor for the videos (0 to 51, lower is better quality).
        progress: show a tqdm progress bar.

    Returns:
        The path of ``manifest.jsonl``.
    """
    root = Path(out)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; choose a folder for --out")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{root} is not empty; choose an empty folder or pass --overwrite (overwrite=True)"
        )
    generator = SynthEditGenerator(
        size=size, frames=frames, seed=seed, split=split, categories=categories
    )
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)

    lines = []
    for index in tqdm(range(num), desc="sama synth", unit="pair", disable=not progress):
        sample = generator.sample(index)
        source = f"videos/{sample.id}_source.mp4"
        target = f"videos/{sample.id}_target.mp4"
        mask = f"masks/{sample.id}.npz"
        write_video(root / source, sample.source, fps, crf=crf)
        write_video(root / target, sample.target, fps, crf=crf)
        np.savez_compressed(root / mask, mask=sample.mask.numpy())
        record = {
            "id": sample.id,
            "source": source,
            "target": target,
            "instruction": sample.instruction,
            "category": sample.category,
            "mask": mask,
            "source_caption": sample.source_caption,
            "target_caption": sample.target_caption,
        }
        lines.append(json.dumps(record) + "\n")

    settings = {
        "generator": "synthedit",
        "num": num,
        "seed": generator.seed,
        "split": split,
        "size": list(generator.size),
        "frames": generator.frames,
        "fps": fps,
        "crf": crf,
        "categories": list(generator.categories),
    }
    _atomic_write_text(root / "synthedit.json", json.dumps(settings, indent=2) + "\n")
    manifest = root / "manifest.jsonl"
    _atomic_write_text(manifest, "".join(lines))
    return manifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sama synth",
        description="Generate SynthEdit: procedural video edit pairs with exact ground truth "
        "(videos, lossless masks and a manifest.jsonl).",
    )
    parser.add_argument("--out", required=True, type=Path, help="destination folder (empty)")
    parser.add_argument("--num", required=True, type=int, help="number of pairs")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="default train")
    parser.add_argument(
        "--size", nargs=2, type=int, default=[64, 64], metavar=("H", "W"), help="default 64 64"
    )
    parser.add_argument("--frames", type=int, default=17, help="frames per video (default 17)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate (default 8)")
    parser.add_argument("--crf", type=int, default=10, help="x264 quality, 0-51 (default 10)")
    parser.add_argument(
        "--categories", nargs="+", choices=CATEGORIES, default=None, help="default: all"
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return parser


def synth_main(argv: list[str] | None = None) -> int:
    """``sama synth --out DIR --num N [--seed S --split --size H W --frames --fps --overwrite]``.

    Returns the exit status: 0 on success, 2 on a usage error (printed as one line).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        manifest = write_dataset(
            args.out,
            args.num,
            seed=args.seed,
            split=args.split,
            size=tuple(args.size),
            frames=args.frames,
            fps=args.fps,
            overwrite=args.overwrite,
            categories=args.categories,
            crf=args.crf,
            progress=True,
        )
    except (FileExistsError, ValueError) as error:
        print(f"sama synth: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} {args.split} pairs to {manifest}")
    return 0
