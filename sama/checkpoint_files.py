"""Loading a checkpoint file without running code: ``torch.load(weights_only=True)``, always.

A crafted ``.ckpt`` can hold tensors and plain data but never run code when it is read through
:func:`load_checkpoint_file`. Its errors are one line naming the file:

- :class:`UntrustedCheckpointError`: the file pickles objects (a payload) and is refused;
- :class:`CorruptCheckpointError`: the file is truncated or damaged; the message names the
  newest other ``*.ckpt`` of the same folder that loads, if any.

Training (``sama.checkpoint_io.SafeCheckpointIO``) and inference (``sama.export``) both load
through here.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "UntrustedCheckpointError",
    "last_good_checkpoint",
    "load_checkpoint_file",
]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message is one line naming the file and the fix."""


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint pickles Python objects (it could run code when loaded); it is refused."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint is truncated or damaged."""


def _is_local(path: str | os.PathLike[str]) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _loads(path: str | os.PathLike[str], map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    if _is_local(path):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    with get_filesystem(path).open(str(path), "rb") as handle:
        return torch.load(handle, map_location=map_location, weights_only=True)


def _loads_ok(path: Path) -> bool:
    try:
        _loads(path, mmap=True)
    except Exception:  # noqa: BLE001 - any failure means "not a good checkpoint"
        return False
    return True


def last_good_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The newest other ``*.ckpt`` beside ``path`` that loads (weights only), or None."""
    target = Path(path)
    if not _is_local(path) or not target.parent.is_dir():
        return None
    others = [p for p in target.parent.glob("*.ckpt") if p.is_file() and p != target]
    for candidate in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        if _loads_ok(candidate):
            return candidate
    return None


def _corrupt(path: str | os.PathLike[str], reason: str, what: str) -> CorruptCheckpointError:
    good = last_good_checkpoint(path)
    hint = (
        f"the last good checkpoint in its folder is {good}: use --ckpt_path {good}"
        if good is not None
        else "no other checkpoint in its folder loads; start the run again"
    )
    return CorruptCheckpointError(f"{what} {path}: truncated or corrupt ({reason}); {hint}")


def load_checkpoint_file(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, what: str = "checkpoint"
) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; clear one-line errors.

    Args:
        path: a local path or an fsspec URL of a ``torch.save`` file.
        map_location: as for ``torch.load``.
        what: how the message names the file (``"init_from"``, ``"--ckpt_path"``, ...).

    Raises:
        FileNotFoundError: no such file.
        UntrustedCheckpointError: the file pickles objects beyond tensors and plain data.
        CorruptCheckpointError: the file is truncated or damaged, or holds no dict.
    """
    if _is_local(path) and not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path}: no such checkpoint file")
    try:
        checkpoint = _loads(path, map_location)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "Unsupported global" in message:
            found = message.split("Unsupported global:", 1)[1].split(" was not", 1)[0].strip()
            raise UntrustedCheckpointError(
                f"{what} {path}: refused, it pickles Python objects ({found}) that could run "
                "code when loaded; only load checkpoints of tensors and plain data "
                "(re-save it from a trusted copy with torch.save of its state dicts)"
            ) from None
        raise _corrupt(path, "not a torch checkpoint", what) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _corrupt(path, reason[:200], what) from None
    if not isinstance(checkpoint, dict):
        raise _corrupt(path, f"holds a {type(checkpoint).__name__}, not a dict", what)
    return checkpoint
