"""Editing benchmarks as datasets, and a datamodule for ``sama test``.

A benchmark is a list of :class:`EvalItem` (source clip, instruction, optional ground
truth). One small class per on-disk format:

- :class:`SynthEditEvalSet`: SynthEdit's held-out test split, generated in memory (exact
  targets and masks);
- :class:`RealFootageEvalSet`: SynthEdit on real footage, held-out clips never seen in
  training (exact targets and masks);
- :class:`ManifestEvalSet`: any JSONL manifest in the paired-edit format (``id``,
  ``source``, ``instruction``; ``target``, ``mask``, ``category``, ``target_caption``
  optional);
- :class:`EditVerseBench`: EditVerseBench's ``test.json`` (no ground truth).

Adding a format means subclassing :class:`EvalSet` with ``__len__`` and ``item``.
Layouts: ``source`` / ``target`` uint8 ``(T, H, W, 3)``; ``mask`` bool ``(T, H, W)``, True
where the edit should change pixels.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.synthedit import RealFootageGenerator, SynthEditGenerator
from sama.flow import SamplingSettings
from sama.io import read_video

__all__ = [
    "EvalSet",
    "EvalItem",
    "EvalDataModule",
    "RealFootageEvalSet",
    "EditVerseBench",
    "ManifestEvalSet",
    "SynthEditEvalSet",
    "check_item_id",
    "item_file",
]


def check_item_id(value: object, where: str) -> str:
    """``value`` as a sample id that is one safe file-name component (ids name the files
    written under an output folder: thumbs, edits, predictions); ``ValueError`` naming
    ``where`` otherwise (an empty id, ``.`` / ``..``, a ``/`` or ``\\``, an absolute path)."""
    text = str(value)
    if (
        not text
        or text in {".", ".."}
        or any(c in text for c in "/\\\0")
        or Path(text).is_absolute()
        or Path(text).name != text
    ):
        raise ValueError(
            f"{where}: id {text!r} is not a safe file name; use one name without '/', '\\' "
            "or '..' (ids name the output files)"
        )
    return text


def item_file(folder: str | Path, item_id: str, suffix: str) -> Path:
    """``folder/<item_id><suffix>``, refusing an id that would leave ``folder``."""
    return Path(folder) / f"{check_item_id(item_id, 'sample')}{suffix}"


@dataclass
class EvalItem:
    """One benchmark sample. Videos uint8 ``(T, H, W, 3)``; mask bool ``(T, H, W)``."""

    id: str
    instruction: str
    source: Tensor
    fps: float = 8.0
    category: str = "all"
    target: Tensor | None = None
    mask: Tensor | None = None
    caption: str | None = None
    source_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = check_item_id(self.id, "EvalItem")


class EvalSet(Dataset, ABC):
    """A benchmark: indexable :class:`EvalItem` s plus what ground truth it has."""

    name: str = "benchmark"
    has_target: bool = False
    has_mask: bool = False

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def item(self, index: int) -> EvalItem: ...

    def __getitem__(self, index: int) -> EvalItem:
        return self.item(index)

    def describe(self) -> dict[str, Any]:
        """Settings stored in ``results.json``."""
        return {"benchmark": type(self).__name__, "name": self.name, "samples": len(self)}


class SynthEditEvalSet(EvalSet):
    """SynthEdit test samples generated on the fly (default: the held-out split).

    Args:
        num: number of samples.
        size / frames / seed: SynthEdit generator settings.
        split: ``"heldout"`` (colour-shape combinations never seen in training) or ``"test"``.
        fps: frame rate stored with the clips.
    """

    name = "synthedit"
    has_target = True
    has_mask = True

    def __init__(
        self,
        num: int = 64,
        size: tuple[int, int] = (32, 32),
        frames: int = 9,
        seed: int = 0,
        split: str = "heldout",
        fps: float = 8.0,
    ) -> None:
        self.num = int(num)
        self.fps = float(fps)
        self.settings = {"size": list(size), "frames": frames, "seed": seed, "split": split}
        self.generator = SynthEditGenerator(size=tuple(size), frames=frames, seed=seed, split=split)
        self.name = f"synthedit-{split}"

    def __len__(self) -> int:
        return self.num

    def item(self, index: int) -> EvalItem:
        if not 0 <= index < self.num:
            raise IndexError(index)
        s = self.generator.sample(index)
        return EvalItem(
            id=s.id,
            instruction=s.instruction,
            source=s.source,
            fps=self.fps,
            category=s.category,
            target=s.target,
            mask=s.mask,
            caption=s.target_caption,
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.settings}


class RealFootageEvalSet(SynthEditEvalSet):
    """SynthEdit-on-real-footage samples generated on the fly (default: the held-out split,
    whose clips share no footage with training; see
    :class:`~datamodules.synthedit.RealFootageGenerator`).

    Args:
        num: number of samples (categories cycle: recolor, replace, remove, add, style, tone).
        size / frames / seed / categories: generator settings; sides at least 64.
        split: ``"heldout"`` (clips never seen in training) or ``"test"`` (training footage).
        fps: frame rate stored with the clips.
    """

    name = "real-footage"

    def __init__(
        self,
        num: int = 48,
        size: tuple[int, int] = (64, 64),
        frames: int = 9,
        seed: int = 0,
        split: str = "heldout",
        categories: list[str] | None = None,
        fps: float = 8.0,
    ) -> None:
        self.num = int(num)
        self.fps = float(fps)
        self.settings = {
            "size": list(size),
            "frames": frames,
            "seed": seed,
            "split": split,
            "categories": list(categories) if categories else None,
        }
        self.generator = RealFootageGenerator(
            size=tuple(size), frames=frames, seed=seed, split=split, categories=categories
        )
        self.name = f"real-footage-{split}"


def _read_mask(path: Path) -> Tensor:
    if path.suffix == ".npz":
        with np.load(path) as data:
            if "mask" not in data:
                raise ValueError(f"{path}: no array named 'mask' in this .npz")
            return torch.from_numpy(data["mask"].astype(bool))
    frames, _ = read_video(path)
    return frames.amax(dim=-1) > 0


class ManifestEvalSet(EvalSet):
    """A JSONL manifest in the paired-edit format; ground truth optional.

    Each line: ``{"id", "source", "instruction"}`` plus optional ``target``, ``mask`` (.npz
    with a bool ``mask`` array, or a video where non-zero = edited), ``category``,
    ``target_caption``. Paths are relative to the manifest. Errors name the file and line.
    """

    def __init__(self, manifest: str, max_samples: int | None = None) -> None:
        self.path = Path(manifest)
        if not self.path.exists():
            raise FileNotFoundError(f"benchmark manifest {self.path} does not exist")
        self.entries = self._parse()
        if max_samples is not None:
            self.entries = self.entries[:max_samples]
        self.name = self.path.stem
        self.has_target = bool(self.entries) and all("target" in e for e in self.entries)
        self.has_mask = bool(self.entries) and all("mask" in e for e in self.entries)

    def _parse(self) -> list[dict[str, Any]]:
        entries, seen = [], set()
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: invalid JSON ({err.msg}); one object per line"
                ) from None
            for key in ("id", "source", "instruction"):
                if key not in entry:
                    raise ValueError(f"{where}: missing field {key!r}")
            entry["id"] = check_item_id(entry["id"], where)
            if entry["id"] in seen:
                raise ValueError(f"{where}: duplicate id {entry['id']!r}; ids must be unique")
            seen.add(entry["id"])
            entries.append(entry)
        return entries

    def resolve(self, value: str) -> Path:
        """A manifest path, relative to the manifest file unless absolute."""
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path

    def __len__(self) -> int:
        return len(self.entries)

    def item(self, index: int) -> EvalItem:
        entry = self.entries[index]
        source_path = self.resolve(entry["source"])
        source, fps = read_video(source_path)
        target = mask = None
        if "target" in entry:
            target, _ = read_video(self.resolve(entry["target"]))
        if "mask" in entry:
            mask = _read_mask(self.resolve(entry["mask"]))
        return EvalItem(
            id=entry["id"],
            instruction=entry["instruction"],
            source=source,
            fps=fps,
            category=entry.get("category", "all"),
            target=target,
            mask=mask,
            caption=entry.get("target_caption"),
            source_path=str(source_path),
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "manifest": str(self.path)}


_TAG = re.compile(r"<video\d+>")


class EditVerseBench(EvalSet):
    """EditVerseBench's ``test.json``: ``{id: {"<text>", "<video1>", "type", ...}}``.

    ``<text>`` is the instruction with ``<video1>`` tags (removed here), ``<video1>`` the
    source path (relative to the json file), ``type`` the edit category, ``target_prompt`` the
    caption used for CLIP text alignment; ``direction`` and ``source_prompt`` are kept in
    ``extra``. There is no ground truth.
    """

    def __init__(self, path: str, max_samples: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"EditVerseBench file {self.path} does not exist")
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: invalid JSON ({err.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected an object keyed by sample id")
        self.entries = []
        for key, entry in data.items():
            for name in ("<text>", "<video1>"):
                if name not in entry:
                    raise ValueError(f"{self.path}: entry {key!r} has no {name!r} field")
            self.entries.append((check_item_id(key, f"{self.path}: entry {key!r}"), entry))
        if max_samples is not None:
            self.entries = self.entries[:max_samples]
        self.name = "editversebench"

    def __len__(self) -> int:
        return len(self.entries)

    def item(self, index: int) -> EvalItem:
        key, entry = self.entries[index]
        source_path = Path(entry["<video1>"])
        if not source_path.is_absolute():
            source_path = self.path.parent / source_path
        source, fps = read_video(source_path)
        instruction = " ".join(_TAG.sub(" ", entry["<text>"]).split())
        return EvalItem(
            id=key,
            instruction=instruction,
            source=source,
            fps=fps,
            category=str(entry.get("type", "all")),
            caption=entry.get("target_prompt"),
            source_path=str(source_path),
            extra={k: entry[k] for k in ("direction", "source_prompt") if k in entry},
        )


class _Shard(Dataset):
    def __init__(self, benchmark: EvalSet, indices: list[int]) -> None:
        self.benchmark, self.indices = benchmark, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> EvalItem:
        return self.benchmark.item(self.indices[i])


class EvalDataModule(L.LightningDataModule):
    """Serves a :class:`EvalSet` to ``sama test`` / ``sama predict``: one :class:`EvalItem` per
    step, edited and scored by :class:`sama.evaluation.evaluator.Evaluator` (``SamaCLI`` adds it).

    ``sampling`` holds overrides of the model's sampler defaults, keyed as the fields of
    :class:`sama.flow.SamplingSettings` (``steps``, ``guidance``, ``source_guidance``, ``shift``;
    not ``seed``); fields left out keep the model's value (e.g. ``shift`` = its
    ``sample_shift``). ``seed`` is the edits' noise seed (``sama`` derives it from
    ``seed_everything``).
    Every item is edited with those settings, scored (plus the identity and oracle baselines)
    and ``results.json``, ``report.html`` and the edited mp4s go under ``output_dir``.
    ``clip_path`` / ``dino_path`` enable the CLIP / DINO metrics (local model dirs). Under DDP
    rank ``r`` of ``w`` gets items ``r, r + w, ...`` (no padding, so no sample is scored twice).
    ``sama predict`` with this datamodule only writes the edits, to
    ``output_dir/predictions/<id>.mp4``.
    """

    def __init__(
        self,
        benchmark: EvalSet,
        output_dir: str = "runs/bench",
        sampling: dict[str, Any] | None = None,
        seed: int = 0,
        clip_path: str | None = None,
        dino_path: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.output_dir = output_dir
        self.sampling = dict(sampling or {})
        if "seed" in self.sampling:
            raise ValueError(
                "EvalDataModule.sampling: no 'seed' here; the edits' noise seed is the run's "
                "seed_everything (EvalDataModule.seed)"
            )
        self.seed = int(seed)
        try:
            SamplingSettings.from_dict(self.sampling)
        except (TypeError, ValueError) as err:
            raise ValueError(f"EvalDataModule.sampling: {err}") from None
        self.clip_path = clip_path
        self.dino_path = dino_path
        self.num_workers = num_workers

    def sampling_settings(self, defaults: SamplingSettings) -> SamplingSettings:
        """The settings to edit with: ``defaults`` (the model's) updated by ``sampling``, with
        ``seed`` as the noise seed."""
        return SamplingSettings.from_dict(
            {**defaults.to_dict(), **self.sampling, "seed": self.seed}
        )

    def test_dataloader(self) -> DataLoader:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        indices = list(range(rank, len(self.benchmark), world))
        return DataLoader(
            _Shard(self.benchmark, indices),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
        )

    def predict_dataloader(self) -> DataLoader:
        """The same items for ``sama predict`` (edits written to ``output_dir/predictions``)."""
        return self.test_dataloader()


def _identity(item: EvalItem) -> EvalItem:
    return item
