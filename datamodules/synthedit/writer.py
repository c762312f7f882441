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
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datamodules.synthedit.generator import SPLITS, SynthEditGenerator
from datamodules.synthedit.scenes import CATEGORIES
from sama.files import atomic_write_text
from sama.io import write_video


def _check_even(size: tuple[int, int]) -> None:
    """H.264 (yuv420p) needs even sides; an odd side would make videos larger than masks."""
    height, width = (int(side) for side in size)
    if height % 2 or width % 2:
        even = f"{height + height % 2} {width + width % 2}"
        raise ValueError(
            f"--size {height} {width}: SynthEdit videos are H.264 and need even sides "
            f"(masks would not match the padded videos); use --size {even}"
        )


def _move_into(staging: Path, root: Path) -> None:
    """Move everything of ``staging`` into ``root`` (an existing folder), manifest last."""
    names = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    names.sort(key=lambda name: name.name == "manifest.jsonl")
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, root / name)
    shutil.rmtree(staging)


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
    "source_caption", "target_caption"}`` with paths relative to the manifest. Everything is
    written into a hidden staging folder beside ``out`` and moved into place at the end
    (the manifest last), so a failed or interrupted run leaves ``out`` as it was (no partial
    folders that block the retry) and a folder with a manifest holds every file it names.

    Args:
        out: destination folder; created if missing, refused if not empty unless ``overwrite``
            (files of the same names are then replaced, other files are left alone).
        num: number of pairs (``>= 1``).
        seed, split, size, frames, categories: see :class:`SynthEditGenerator`; ``size`` must
            have even sides (H.264 videos).
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
    _check_even(size)
    generator = SynthEditGenerator(
        size=size, frames=frames, seed=seed, split=split, categories=categories
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
    try:
        _write_files(staging, generator, num, split, fps, crf, progress)
        if root.is_dir() and any(root.iterdir()):
            _move_into(staging, root)  # --overwrite: replace same-named files, keep others
        else:
            if root.is_dir():
                root.rmdir()
            os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root / "manifest.jsonl"


def _write_files(
    root: Path,
    generator: SynthEditGenerator,
    num: int,
    split: str,
    fps: float,
    crf: int,
    progress: bool,
) -> None:
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
    atomic_write_text(root / "synthedit.json", json.dumps(settings, indent=2) + "\n")
    atomic_write_text(root / "manifest.jsonl", "".join(lines))


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
        "--size",
        nargs=2,
        type=int,
        default=[64, 64],
        metavar=("H", "W"),
        help="even sides (H.264), default 64 64",
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
    except (OSError, RuntimeError) as error:
        print(f"sama synth: error: {error}; nothing was written to {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {args.num} {args.split} pairs to {manifest}")
    return 0
