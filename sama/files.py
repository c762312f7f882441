"""Files that are never half-written, and checksums of the files we ship or are handed.

Every write of a result, checkpoint, export or cache entry in the project goes through
:func:`atomic_write`: the data is written to a temporary file *in the destination folder* (so
the final ``os.replace`` is a rename on one filesystem, atomic on POSIX), flushed and fsynced,
then moved onto the final name. A kill or a full disk at any moment leaves the previous file
intact and nothing half-written under the final name; the temporary file is removed on error.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "CHECKSUMS_FILE",
    "ChecksumError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "sha256_file",
    "verify_checksums",
    "write_checksums",
]

#: the checksum list of an export: one ``<sha256>  <file name>`` line per file
CHECKSUMS_FILE = "SHA256SUMS"


class ChecksumError(ValueError):
    """A file listed in a checksum list is missing or differs from its recorded digest."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then move it there.

    ``write`` receives the temporary file's path (a ``str``) and must write the whole file to
    it (e.g. ``torch.save(obj, tmp)``, ``safetensors.torch.save_file(state, tmp)``). Parent
    folders are created. Returns ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be tens of GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(
    directory: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    sums_file: str = CHECKSUMS_FILE,
) -> Path:
    """Write ``directory/sums_file`` listing ``names`` (default: every other file, sorted)."""
    directory = Path(directory)
    if names is None:
        names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != sums_file)
    lines = "".join(f"{sha256_file(directory / name)}  {name}\n" for name in names)
    return atomic_write_text(directory / sums_file, lines)


def verify_checksums(
    directory: str | os.PathLike[str], sums_file: str = CHECKSUMS_FILE
) -> list[str]:
    """Check every ``<sha256>  <name>`` line of ``directory/sums_file``; returns the names.

    Raises :class:`ChecksumError` naming the first missing or changed file (and what to do).
    """
    directory = Path(directory)
    listing = directory / sums_file
    if not listing.is_file():
        raise ChecksumError(f"{listing}: no checksum list; re-export the weights")
    names = []
    for line_no, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or "/" in name or name in (".", ".."):
            raise ChecksumError(f"{listing}:{line_no}: expected '<sha256>  <file name>'")
        path = directory / name
        if not path.is_file():
            raise ChecksumError(
                f"{path}: listed in {sums_file} but missing; restore it or re-export"
            )
        if sha256_file(path) != digest:
            raise ChecksumError(
                f"{path}: checksum differs from {sums_file}; restore it or re-export"
            )
        names.append(name)
    return names
