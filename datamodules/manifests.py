"""Manifest reading and seeded randomness shared by the datasets.

A manifest is a text file listing data items, one per line:

- ``.jsonl``: one JSON object per line;
- ``.csv``: a header row naming the fields, then one row per item;
- ``.txt``: one path per line (only for video clips).

Blank lines and lines starting with ``#`` are skipped in ``.jsonl`` and ``.txt`` manifests.
Relative paths are resolved against the manifest's folder. Every problem raises
:class:`ManifestError`, naming the file and line and saying what to fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MANIFEST_SUFFIXES = frozenset({".jsonl", ".csv", ".txt"})


class ManifestError(ValueError):
    """A manifest is malformed or points at something missing; the message names file and line."""

    def __init__(self, manifest: str | Path, line: int | None, problem: str) -> None:
        self.manifest = Path(manifest)
        self.line = line
        self.problem = problem
        where = f"{self.manifest}:{line}" if line is not None else str(self.manifest)
        super().__init__(f"{where}: {problem}")


def read_manifest(manifest: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` for each item of a ``.jsonl``, ``.csv`` or ``.txt`` manifest.

    ``.txt`` rows are ``{"path": <line>}``. Values are kept as the manifest has them (strings
    for CSV and TXT, any JSON value for JSONL).
    """
    file = Path(manifest)
    if not file.is_file():
        raise ManifestError(file, None, "manifest file does not exist; check the path")
    suffix = file.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(
            file, None, f"unknown manifest type {suffix!r}; use .jsonl, .csv or .txt"
        )
    with file.open(encoding="utf-8", newline="") as handle:
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise ManifestError(file, 1, "the CSV has no header row; add one naming the fields")
            for row in reader:
                if None in row:
                    raise ManifestError(
                        file, reader.line_num, "the row has more columns than the header"
                    )
                yield reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}
            return
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if suffix == ".txt":
                yield number, {"path": line}
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(
                    file, number, f"invalid JSON ({error.msg}); write one JSON object per line"
                ) from error
            if not isinstance(row, dict):
                raise ManifestError(
                    file, number, f"expected a JSON object, got {type(row).__name__}"
                )
            yield number, row


def required_field(row: dict, field: str, manifest: Path, line: int) -> str:
    """``row[field]`` as a non-empty string, or a :class:`ManifestError`."""
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ManifestError(manifest, line, f"missing field {field!r}; every item needs one")
    if not isinstance(value, str):
        raise ManifestError(
            manifest, line, f"field {field!r} must be a string, got {type(value).__name__}"
        )
    return value.strip()


def resolve_file(value: str, field: str, manifest: Path, line: int) -> Path:
    """A path from a manifest, relative to the manifest's folder, that must exist."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = manifest.parent / path
    if not path.is_file():
        raise ManifestError(
            manifest, line, f"{field} file {path} does not exist; fix the path or remove the item"
        )
    return path


def stable_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from ``parts`` alone (same in every process and on every platform)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part.encode() if isinstance(part, str) else struct.pack("<q", int(part))
        digest.update(struct.pack("<I", len(data)) + data)
    return int.from_bytes(digest.digest(), "little") >> 1


def seeded_rng(*parts: int | str) -> np.random.Generator:
    """A numpy generator seeded by :func:`stable_seed` of ``parts``."""
    return np.random.default_rng(stable_seed(*parts))
