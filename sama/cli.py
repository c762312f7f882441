"""The ``sama`` command: LightningCLI (fit / validate / test / predict) plus extra subcommands.

``sama fit --config configs/tiny/pretrain.yaml`` trains; ``sama tasks`` lists the registered
tasks. Other areas add subcommands to :data:`EXTRA_COMMANDS` (``name -> (function, help)``; the
function takes the remaining argv and returns an exit code); they are dispatched before
LightningCLI parses anything and are listed by ``sama --help``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

import tasks  # noqa: F401  (built-in task classes: short class names resolve in YAML)
from callbacks.progress import step_counting
from datamodules.eval_sets import EvalDataModule
from sama.checkpoint_io import CheckpointError, load_checkpoint_file
from sama.evaluation.evaluator import Evaluator
from sama.io import VideoReadError
from sama.module import SamaModule
from sama.pipeline import check_cuda, verbose_errors
from sama.run_dir import RunDirError, move_outputs_to_root, prepare_fit, trainer_extras
from tasks.base import available_tasks

__all__ = ["SamaCLI", "EXTRA_COMMANDS", "main", "tasks_main"]

Command = Callable[[list[str]], int]


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, keeping the epilog's line breaks (the extra-command table)."""


def _run_seed(seed: object) -> int:
    """``seed_everything`` as the one seed of a run (the module's and the datamodule's too)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(
            f"seed_everything must be an integer (it also seeds the model and the data), got {seed!r}"
        )
    return seed


_LINKED_SEEDS = {"model.seed", "data.init_args.seed"}


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """Every key of a nested mapping as a dotted path (``{"model": {"seed": 1}}`` and
    ``{"model.seed": 1}`` both give ``model.seed``)."""
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys += _dotted_keys(value, dotted + ".")
    return keys


def _config_paths(argv: list[str]) -> list[Path]:
    """The files ``--config`` / ``-c`` name on a command line (both ``--config X`` and
    ``--config=X``); inline YAML strings are skipped."""
    paths = []
    for i, arg in enumerate(argv):
        value = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value and Path(value).is_file():
            paths.append(Path(value))
    return paths


def check_linked_seeds(path: Path, seen: frozenset[Path] = frozenset()) -> None:
    """Refuse a config file (or a file it includes with ``config:``) that sets ``model.seed``
    or ``data.init_args.seed``: jsonargparse would silently replace them with the value
    derived from ``seed_everything``, so the file would not mean what it says."""
    import yaml

    path = path.resolve()
    if path in seen:
        return
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return  # jsonargparse reports unreadable files itself
    if not isinstance(data, dict):
        return
    for key in _LINKED_SEEDS & set(_dotted_keys(data)):
        raise ValueError(
            f"{path}: sets {key}, which is derived from seed_everything (the one seed of "
            "a run); set seed_everything instead"
        )
    included = data.get("config")
    for name in included if isinstance(included, list) else [included]:
        if isinstance(name, str) and (path.parent / name).is_file():
            check_linked_seeds(path.parent / name, seen | {path})


class SamaCLI(LightningCLI):
    """LightningCLI with :class:`~sama.module.SamaModule` and any ``LightningDataModule``
    (``data.class_path: datamodules.streams.SamaDataModule``).

    One seed: ``seed_everything`` (default 0) is also ``model.seed`` and ``data.init_args.seed``;
    those two are derived, never set on their own (``--model.seed`` is refused)."""

    def __init__(self, args: list[str] | None = None, **kwargs: object) -> None:
        available_tasks()  # import third-party tasks (entry points) so YAML can name them
        importlib.import_module("datamodules")
        for path in _config_paths(list(sys.argv[1:] if args is None else args)):
            check_linked_seeds(path)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)  # an integer: it derives the other seeds
        kwargs.setdefault(
            "parser_kwargs", {"epilog": _extra_help(), "formatter_class": _HelpFormatter}
        )
        super().__init__(
            SamaModule,
            LightningDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``seed_everything`` -> ``model.seed`` and ``data.init_args.seed`` (see the class)."""
        parser.link_arguments("seed_everything", "model.seed", compute_fn=_run_seed)
        parser.link_arguments("seed_everything", "data.init_args.seed", compute_fn=_run_seed)

    def _parse_ckpt_path(self) -> None:
        """Lightning reads ``--ckpt_path``'s hyperparameters (weights only); a refused or corrupt
        file is one line naming it (:func:`sama.checkpoint_io.load_checkpoint_file`)."""
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            ckpt = self.config[self.config.subcommand].get("ckpt_path")
            load_checkpoint_file(ckpt, what="--ckpt_path")  # raises the one-line error
            raise error

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":  # --trainer.default_root_dir moves all of a run's outputs
            move_outputs_to_root(self.config["fit"]["trainer"])

    def before_fit(self) -> None:
        """One run per folder: lock the run directory, refuse to mix with an earlier run."""
        prepare_fit(self.trainer, self.config_init["fit"].get("ckpt_path"), sys.argv[1:])

    def instantiate_trainer(self, **kwargs: object) -> Trainer:
        """Lightning's trainer, with a step-counting bar in place of its default progress bar,
        the trusted atomic checkpoint IO, the broken-file report and (``fit``) the preemption
        checkpoint (:func:`sama.run_dir.trainer_extras`)."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        configured = trainer_config.get("callbacks") or []
        # a copy: the Trainer appends its default bar to the very list the config holds
        configured = list(configured) if isinstance(configured, list) else [configured]
        kwargs = {**trainer_extras(trainer_config, self.subcommand), **kwargs}
        if isinstance(self.datamodule, EvalDataModule) and not any(
            isinstance(callback, Evaluator) for callback in configured
        ):  # a benchmark is edited, scored and reported by the Evaluator callback
            kwargs["callbacks"] = [*configured, Evaluator()]
        trainer = super().instantiate_trainer(**kwargs)
        bar = trainer.progress_bar_callback
        if bar is not None and not any(bar is callback for callback in configured):
            trainer.callbacks[trainer.callbacks.index(bar)] = step_counting(bar)
        return trainer


def tasks_main(argv: list[str]) -> int:
    """``sama tasks``: print the registered tasks (name, stream, weight, origin, description)."""
    parser = argparse.ArgumentParser(prog="sama tasks", description=tasks_main.__doc__)
    parser.parse_args(argv)
    rows = [("name", "stream", "weight", "origin", "description")]
    for name, info in available_tasks().items():
        cls = info.cls
        rows.append((name, cls.stream, f"{cls.default_weight:g}", info.origin, cls.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[4]
        )
    return 0


def _lazy(module: str, function: str) -> Command:
    """A command that imports ``module.function`` only when it runs."""

    def run(argv: list[str]) -> int:
        return int(getattr(importlib.import_module(module), function)(argv) or 0)

    run.__name__ = function
    return run


#: Extra subcommands: ``name -> (function(argv) -> exit code, one-line help)``.
EXTRA_COMMANDS: dict[str, tuple[Command, str]] = {
    "tasks": (tasks_main, "List the registered training tasks (built-in and plugins)."),
    "synth": (
        _lazy("datamodules.synthedit", "synth_main"),
        "Generate the SynthEdit synthetic edit dataset.",
    ),
    "edit": (
        _lazy("sama.pipeline", "edit_main"),
        "Edit a video with a trained checkpoint: --checkpoint --video --instruction --output.",
    ),
    "benchmark": (
        _lazy("sama.evaluation.scorer", "benchmark_main"),
        "Score another editor's outputs: benchmark score --manifest --predictions --output.",
    ),
    "plan": (
        _lazy("sama.plan.cli", "plan_main"),
        "Memory, FLOPs and fit of a run: plan --config CFG [--devices N] [--gpu-memory 80GiB].",
    ),
}


def _extra_help() -> str:
    lines = ["more subcommands:"]
    width = max(len(name) for name in EXTRA_COMMANDS)
    for name, (_, help_text) in EXTRA_COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    return "\n".join(lines)


def _ckpt_path(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
    return None


def _without_ckpt_path(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            out.append(arg)
    return out


def _model_from_export(args: list[str], export_dir: Path) -> list[str]:
    """``--ckpt_path`` names a ``SamaModule.export`` directory: build the model from it
    (``pretrained`` + the encoders of its ``encoders.json``) instead of loading a checkpoint.
    The model section is passed inline (``--model=<json>``)."""
    spec_path = export_dir / "encoders.json"
    if not spec_path.is_file():
        raise SystemExit(
            f"sama {args[0]}: --ckpt_path {export_dir} is a directory without encoders.json; "
            "give a Lightning .ckpt file or a folder written by SamaModule.export"
        )
    specs = json.loads(spec_path.read_text())
    anchor = int(specs.get("anchor_frames", 1))
    model = {
        "pretrained": str(export_dir),
        **{key: specs[key] for key in ("codec", "text_encoder", "semantic_encoder")},
        # evaluation does not train; one task keeps the module's checks satisfied
        "tasks": [{"class_path": "tasks.InstructionEditing"}],
        "anchor_frames": max(anchor, 1),
        "semantic_weight": 0.1 if anchor > 0 else 0.0,
    }
    return [args[0], f"--model={json.dumps(model)}", *_without_ckpt_path(args[1:])]


def _model_from_checkpoint(args: list[str]) -> list[str]:
    """For ``test`` / ``validate`` / ``predict`` with ``--ckpt_path``: take the model's settings
    from the checkpoint's hyperparameters, passed inline as ``--model=<json>`` (a config's
    ``model:`` section or ``--model.*`` options given after still override them), so a
    benchmark config needs no model section. ``--ckpt_path`` may also name a directory written
    by ``SamaModule.export`` (for example the shipped ``weights/tiny-editor``)."""
    if not args or args[0] not in {"test", "validate", "predict"}:
        return args
    ckpt = _ckpt_path(args)
    if ckpt and Path(ckpt).is_dir():
        return _model_from_export(args, Path(ckpt))
    if not ckpt or not Path(ckpt).is_file():
        return args
    hparams = load_checkpoint_file(ckpt, what="--ckpt_path").get("hyper_parameters")
    if not hparams or "codec" not in hparams:
        return args
    model = {k: v for k, v in hparams.items() if not k.startswith("_")}
    model["init_from"] = None  # the checkpoint's own weights are loaded instead
    return [args[0], f"--model={json.dumps(model)}", *args[1:]]


#: errors every command prints as one line ``sama <command>: error: <message>`` (exit 2): the
#: project's own (refused / corrupt checkpoints and exports, run folders, videos, manifests and
#: other bad values) and missing, unreadable or read-only files. ``--verbose`` or
#: ``SAMA_VERBOSE=1`` shows the traceback instead.
ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    RunDirError,
    VideoReadError,
    OSError,
    ValueError,
)


def _accelerator(args: list[str]) -> str | None:
    """``--trainer.accelerator`` given on the command line (a config file's is not read)."""
    for i, arg in enumerate(args):
        if arg == "--trainer.accelerator" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--trainer.accelerator="):
            return arg.split("=", 1)[1]
    return None


def _run(args: list[str]) -> int:
    if args and args[0] in EXTRA_COMMANDS:
        return EXTRA_COMMANDS[args[0]][0](args[1:])
    accelerator = _accelerator(args)
    if accelerator is not None:
        check_cuda(accelerator, "--trainer.accelerator")
    # LightningCLI reads sys.argv; give it exactly the arguments meant for it
    saved = sys.argv
    # evaluation runs record their settings in results.json; only fit saves config.yaml
    kwargs = {} if args and args[0] == "fit" else {"save_config_callback": None}
    try:
        sys.argv = [saved[0] if saved else "sama", *_model_from_checkpoint(args)]
        SamaCLI(**kwargs)
    except SIGTERMException as stop:  # preempted: never report a finished run
        return stop.code if isinstance(stop.code, int) and stop.code else 128 + 15
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sama`` and ``python -m sama``; returns the exit code.

    ``--verbose`` (anywhere; or ``SAMA_VERBOSE=1``) shows the traceback of an error; without
    it the errors of :data:`ONE_LINE_ERRORS` are one line on stderr and exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in args:
        args = [arg for arg in args if arg != "--verbose"]
        os.environ["SAMA_VERBOSE"] = "1"  # the subcommands' own error handling reads it too
    try:
        return _run(args)
    except ONE_LINE_ERRORS as error:
        if verbose_errors():
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(
            f"sama {args[0] if args else ''}: error: {message} (--verbose shows the traceback)",
            file=sys.stderr,
        )
        return 2
