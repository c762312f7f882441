"""Trusted checkpoint loading and atomic checkpoint writes.

Every checkpoint the project loads goes through :func:`load_checkpoint_file`: ``torch.load``
with ``weights_only=True`` always, so a crafted ``.ckpt`` can hold tensors and plain data but
never run code when it is read. Its errors are one line naming the file:

- :class:`UntrustedCheckpointError`: the file pickles objects (a payload) and is refused;
- :class:`CorruptCheckpointError`: the file is truncated or damaged; the message names the
  newest other ``*.ckpt`` of the same folder that loads, if any.

:class:`SafeCheckpointIO` is the Lightning ``CheckpointIO`` that ``SamaCLI`` installs on every
trainer: it loads with :func:`load_checkpoint_file` (whatever ``weights_only`` the caller
asks for) and writes local checkpoints with :func:`sama.files.atomic_write` (temporary file in
the destination folder, fsync, ``os.replace``), so a kill or a full disk leaves the previous
checkpoint intact and nothing half-written under a final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sama.checkpoint_files import (
    CheckpointError,
    CorruptCheckpointError,
    UntrustedCheckpointError,
    _is_local,
    last_good_checkpoint,
    load_checkpoint_file,
)
from sama.files import atomic_write

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "SafeCheckpointIO",
    "UntrustedCheckpointError",
    "last_good_checkpoint",
    "load_checkpoint_file",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that loads weights-only and writes local files atomically."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        local = str(path)[len("file://") :] if str(path).startswith("file://") else path

        def write(tmp: str) -> None:
            torch.save(checkpoint, tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp files are private; checkpoints are not

        atomic_write(local, write)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if _is_local(path) and not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint_file(path, map_location, what="--ckpt_path")
