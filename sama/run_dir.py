"""One run per folder: the run-directory lock and the earlier-run check of ``sama fit``.

A run directory is the folder holding one fit's ``config.yaml``, ``hparams.yaml``, logs and
``checkpoints/`` (the logger's ``log_dir``; see docs/runs.md). ``sama fit``:

- takes ``<run dir>/.lock`` (``fcntl.flock``, the holder's pid written inside) for the whole
  process; a second fit into a live run is refused with :class:`RunDirError`; the kernel drops
  the lock when the holder dies, so a killed run never leaves a stale lock;
- refuses to start a new run in a folder that holds an earlier run's outputs, unless it
  resumes that run (``--ckpt_path last``, a checkpoint of that folder, or Lightning's SLURM
  ``hpc`` checkpoint); the message gives the exact command to resume and how to start over.
"""

from __future__ import annotations

import fcntl
import os
import shlex
from pathlib import Path
from typing import IO, Any

from callbacks.broken_files import BrokenFileReport
from callbacks.preemption import PreemptionCheckpoint
from sama.checkpoint_io import SafeCheckpointIO

__all__ = [
    "LOCK_FILE",
    "RunDirError",
    "RunLock",
    "check_run_dir",
    "checkpoint_dir",
    "earlier_outputs",
    "lock_run_dir",
    "move_outputs_to_root",
    "prepare_fit",
    "trainer_extras",
]

LOCK_FILE = ".lock"

# the locks this process holds (kept open for its lifetime)
_HELD: dict[Path, RunLock] = {}


class RunDirError(RuntimeError):
    """A fit cannot use its run directory; the message says why and what to do."""


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.lock``, held until :meth:`release` or exit."""

    def __init__(self, run_dir: Path, handle: IO[str]) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        """Drop the lock (the lock file stays; it is free once nobody holds the flock)."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        _HELD.pop(self.run_dir, None)


def lock_run_dir(run_dir: str | os.PathLike[str]) -> RunLock:
    """Take ``<run_dir>/.lock`` for this process, or raise :class:`RunDirError` naming the
    process that holds it. Taking a lock this process already holds returns it."""
    folder = Path(run_dir).resolve()
    if folder in _HELD:
        return _HELD[folder]
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirError(
            f"{folder} is in use by a running fit (pid {holder}); wait for it to end, or write "
            "this run to another folder with --trainer.default_root_dir=DIR"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    lock = RunLock(folder, handle)
    _HELD[folder] = lock
    return lock


def earlier_outputs(run_dir: Path, ckpt_dir: Path) -> list[Path]:
    """Files of an earlier run in ``run_dir``: config, hparams, logs, checkpoints."""
    found: list[Path] = []
    for name in ("config.yaml", "hparams.yaml", "metrics.csv"):
        if (run_dir / name).is_file():
            found.append(run_dir / name)
    if run_dir.is_dir():
        found += sorted(run_dir.glob("events.out.tfevents.*"))
        found += sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    if ckpt_dir.is_dir():
        found += sorted(ckpt_dir.glob("*.ckpt"))
    return found


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_run_dir(
    run_dir: str | os.PathLike[str],
    ckpt_dir: str | os.PathLike[str],
    ckpt_path: str | None,
    argv: list[str],
    *,
    slurm: bool = False,
) -> None:
    """Refuse a fit that would mix its outputs with an earlier run's in ``run_dir``.

    Allowed: an empty (or missing) folder; a resume of the folder's own run: ``ckpt_path``
    ``"last"``, a file inside ``run_dir``, or (``slurm``) ``None`` / ``"hpc"`` with a Lightning
    ``hpc_ckpt_*.ckpt`` in ``run_dir``.

    Args:
        run_dir: the run directory (the logger's ``log_dir``).
        ckpt_dir: the folder of the run's checkpoints.
        ckpt_path: the fit's ``--ckpt_path``.
        argv: the ``sama`` arguments of this fit (``["fit", ...]``), for the resume command.
        slurm: whether Lightning runs under SLURM (it then resumes from ``hpc`` checkpoints).

    Raises:
        RunDirError: with the exact command to resume and how to start over.
    """
    folder, checkpoints = Path(run_dir), Path(ckpt_dir)
    found = earlier_outputs(folder, checkpoints)
    if not found:
        return
    if ckpt_path == "last":
        return
    if ckpt_path not in (None, "hpc", "best") and _inside(Path(ckpt_path), folder):
        return
    if ckpt_path in (None, "hpc") and slurm and any(p.name.startswith("hpc_ckpt_") for p in found):
        return
    kept = [arg for arg in argv if arg != "--ckpt_path" and not arg.startswith("--ckpt_path=")]
    if "--ckpt_path" in argv:  # drop the value that followed a separate --ckpt_path
        index = argv.index("--ckpt_path")
        kept = argv[:index] + argv[index + 2 :]
    resume = shlex.join(["sama", *kept, "--ckpt_path=last"])
    names = ", ".join(
        p.name if p.parent == folder else f"{p.parent.name}/{p.name}" for p in found[:4]
    )
    more = f" and {len(found) - 4} more" if len(found) > 4 else ""
    raise RunDirError(
        f"{folder} already holds an earlier run ({names}{more}); resume it with: {resume}  "
        f"(or start over: remove the folder, rm -r {shlex.quote(str(folder))}, or write to "
        "another one with --trainer.default_root_dir=DIR)"
    )


# ---------------------------------------------------------------------------------------------
# wiring into SamaCLI


def _process_rank() -> int:
    """The global rank from the environment (0 in the launching process, before DDP starts)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def _as_list(value: object) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def move_outputs_to_root(trainer_config: Any) -> None:
    """Make ``--trainer.default_root_dir=DIR`` move all of a fit's outputs under ``DIR``.

    ``trainer_config`` is the parsed (not yet instantiated) ``trainer`` section. When
    ``default_root_dir`` is set, every configured logger's ``save_dir`` becomes ``DIR`` (so the
    run directory is ``DIR/<logger name>/<version>``, holding logs, ``config.yaml`` and
    ``hparams.yaml``) and every ``ModelCheckpoint`` ``dirpath`` is cleared (checkpoints go to
    ``<run dir>/checkpoints``).
    """
    root = trainer_config.get("default_root_dir")
    if root is None:
        return
    for logger in _as_list(trainer_config.get("logger")):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is not None and "save_dir" in init_args:
            init_args["save_dir"] = str(root)
    for callback in _as_list(trainer_config.get("callbacks")):
        class_path = str(callback.get("class_path", "")) if hasattr(callback, "get") else ""
        init_args = callback.get("init_args") if hasattr(callback, "get") else None
        if class_path.endswith("ModelCheckpoint") and init_args is not None:
            if init_args.get("dirpath") is not None:
                init_args["dirpath"] = None


def trainer_extras(trainer_config: dict[str, Any], subcommand: str | None) -> dict[str, Any]:
    """Trainer arguments SamaCLI adds: the trusted, atomic :class:`SafeCheckpointIO` (unless a
    ``CheckpointIO`` is configured), a :class:`BrokenFileReport` and, for ``fit``, a
    :class:`PreemptionCheckpoint` (unless configured), and ``default_root_dir`` = the run
    directory (so Lightning's SLURM ``hpc_ckpt_*.ckpt`` land in it)."""
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.plugins.io import CheckpointIO

    plugins = _as_list(trainer_config.get("plugins"))
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(SafeCheckpointIO())
    callbacks = _as_list(trainer_config.get("callbacks"))
    if not any(isinstance(callback, BrokenFileReport) for callback in callbacks):
        callbacks.append(BrokenFileReport())
    extras: dict[str, Any] = {"plugins": plugins}
    if subcommand == "fit":
        if not any(isinstance(callback, PreemptionCheckpoint) for callback in callbacks):
            callbacks.append(PreemptionCheckpoint())
        loggers = [x for x in _as_list(trainer_config.get("logger")) if isinstance(x, Logger)]
        if loggers and loggers[0].log_dir is not None:
            extras["default_root_dir"] = loggers[0].log_dir
    extras["callbacks"] = callbacks
    return extras


def checkpoint_dir(trainer: Any) -> Path:
    """Where the trainer's first ``ModelCheckpoint`` writes (Lightning's own rule)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        return Path(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        return Path(save_dir, str(logger.name), version, "checkpoints")
    return Path(trainer.default_root_dir, "checkpoints")


def prepare_fit(trainer: Any, ckpt_path: str | None, argv: list[str]) -> Path | None:
    """Before ``fit``: turn off ``ModelCheckpoint``'s ``-v1`` file versioning, then (rank 0)
    lock the run directory and refuse to mix this run with an earlier one. Returns the run
    directory (None on other ranks, and for a fit with neither logger nor checkpoints)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            # a resumed run overwrites its own last.ckpt; never last-v1.ckpt beside a stale one
            callback._enable_version_counter = False
    if _process_rank() != 0:
        return None
    if not trainer.loggers and not trainer.checkpoint_callbacks:
        return None  # nothing to own: no logs, no checkpoints (config.yaml is overwritten)
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)
    lock_run_dir(run_dir)
    check_run_dir(
        run_dir, checkpoint_dir(trainer), ckpt_path, argv, slurm=SLURMEnvironment.detect()
    )
    return run_dir
