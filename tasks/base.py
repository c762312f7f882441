"""Training tasks: the :class:`Task` base class, :class:`EditSample` and the task registry.

A task turns one batch of its stream into an :class:`EditSample` (source, target, instruction,
anchor frames, optional loss mask). Every objective of SAMA is a task: the Motion Alignment
pretext corruptions, semantic anchoring on image pairs, supervised instruction editing. The
module trains all of them with the same flow-matching (+ semantic) loss.

A clip-stream pretext task subclasses :class:`ClipCorruptionTask` and writes only its
corruption (:meth:`ClipCorruptionTask.corrupt`) and its class attributes; the batch checks, the
instruction, the anchor frames and the :class:`EditSample` assembly live here, in
:meth:`ClipCorruptionTask.prepare` and :meth:`Task.make_sample`.

Registry: built-in tasks register with :func:`register_task` (every public module of the
``tasks`` package is imported by :func:`available_tasks`, so a new built-in is one file);
other distributions publish tasks through the entry-point group ``sama.tasks``
(``name = "package.module:TaskClass"``). :func:`available_tasks` lists both,
:func:`build_task` builds one by name or class path.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "BUILTIN_ORIGIN",
    "ENTRY_POINT_GROUP",
    "STREAMS",
    "ClipCorruptionTask",
    "EditSample",
    "Task",
    "TaskInfo",
    "available_tasks",
    "build_task",
    "register_task",
    "require",
    "select_anchors",
    "split_batch",
    "with_token",
]

ENTRY_POINT_GROUP = "sama.tasks"
STREAMS: tuple[str, ...] = ("clips", "video_pairs", "image_pairs")
BUILTIN_ORIGIN = "built-in"


@dataclass
class EditSample:
    """What a task hands to the module: one micro-batch of edit examples.

    Attributes:
        source: ``(B, 3, Ts, H, W)`` float32 in [-1, 1], the clean conditioning video, or
            ``None`` for pure generation (no source tokens). ``Ts`` may differ from ``T``.
        target: ``(B, 3, T, H, W)`` float32 in [-1, 1], the video the model learns to produce.
        instructions: ``B`` prompts, given to the text encoder as they are.
        anchors: ``(B, N, 3, H, W)`` anchor frames taken from the target (semantic anchoring).
        loss_mask: ``(B, 1, T, H, W)`` pixel-space weights >= 0 (0 = ignored, 1 = counts, more
            = counts more, e.g. ``edit_region_weight``; the loss is their weighted mean), or ``None``
            (the whole target counts).
        is_image: True for image pairs (1-frame targets).
        source_reusable: True when ``source`` is the batch's own video (a pair's source, the
            clip itself) or a deterministic function of it, i.e. the same tensor every time the
            item comes back, so its latents are worth caching; False (the default) for a source
            drawn afresh each step (a random corruption): the module then encodes it with the
            plain codec and never stores it in the latent cache.
    """

    source: Tensor | None
    target: Tensor
    instructions: list[str]
    anchors: Tensor
    loss_mask: Tensor | None = None
    is_image: bool = False
    source_reusable: bool = False

    def __post_init__(self) -> None:
        target = self.target
        if target.ndim != 5 or target.shape[1] != 3:
            raise ValueError(
                f"EditSample: target must be (B, 3, T, H, W), got {tuple(target.shape)}"
            )
        batch = target.shape[0]
        source = self.source
        if source is not None and (source.ndim != 5 or source.shape[:2] != target.shape[:2]):
            raise ValueError(
                f"EditSample: source must be (B={batch}, 3, Ts, H, W), got {tuple(source.shape)}"
            )
        if len(self.instructions) != batch:
            raise ValueError(
                f"EditSample: {len(self.instructions)} instructions for a batch of {batch}"
            )
        anchors = self.anchors
        if anchors.ndim != 5 or anchors.shape[0] != batch or anchors.shape[2] != 3:
            raise ValueError(
                f"EditSample: anchors must be (B={batch}, N, 3, H, W), got {tuple(anchors.shape)}"
            )
        mask_shape = (batch, 1, *target.shape[2:])
        if self.loss_mask is not None and tuple(self.loss_mask.shape) != mask_shape:
            raise ValueError(
                f"EditSample: loss_mask must be (B, 1, T, H, W)={mask_shape}, got "
                f"{tuple(self.loss_mask.shape)}"
            )

    @classmethod
    def concat(cls, samples: Sequence[EditSample]) -> EditSample:
        """The samples joined along the batch dimension, in order. A ``loss_mask`` that some
        samples lack counts everywhere (ones) for those; ``is_image`` and ``source_reusable``
        are the first sample's (one task prepared them all)."""
        if not samples:
            raise ValueError("EditSample.concat: no samples to join")
        if len(samples) == 1:
            return samples[0]
        first = samples[0]
        if any(s.source is None for s in samples) != all(s.source is None for s in samples):
            raise ValueError("EditSample.concat: some samples have a source and some do not")
        source = None if first.source is None else torch.cat([s.source for s in samples])
        loss_mask = None
        if any(s.loss_mask is not None for s in samples):
            loss_mask = torch.cat(
                [
                    s.loss_mask
                    if s.loss_mask is not None
                    else s.target.new_ones((s.target.shape[0], 1, *s.target.shape[2:]))
                    for s in samples
                ]
            )
        return cls(
            source=source,
            target=torch.cat([s.target for s in samples]),
            instructions=[text for s in samples for text in s.instructions],
            anchors=torch.cat([s.anchors for s in samples]),
            loss_mask=loss_mask,
            is_image=first.is_image,
            source_reusable=first.source_reusable,
        )


#: Keys of a training batch that describe the whole micro-batch, not one sample each
#: (``datamodules.SamaDataModule``'s ``task``, ``stream``, ``index`` and ``skipped``).
_BATCH_META_KEYS = frozenset({"task", "stream", "index", "skipped"})


def split_batch(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A collated batch as ``B`` one-sample batches, in order.

    Tensors (``(B, ...)``) and lists of length ``B`` are sliced to their ``[j : j + 1]``; the
    micro-batch's own keys (``task``, ``stream``, ``index``, ``skipped``) and any other value
    are shared. ``B`` is the first tensor's leading size; a batch without tensors is one sample.
    """
    sizes = [v.shape[0] for v in batch.values() if isinstance(v, Tensor) and v.ndim > 0]
    if not sizes:
        return [dict(batch)]
    size = sizes[0]
    out: list[dict[str, Any]] = []
    for j in range(size):
        one: dict[str, Any] = {}
        for key, value in batch.items():
            per_sample = key not in _BATCH_META_KEYS and (
                (isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == size)
                or (isinstance(value, list) and len(value) == size)
            )
            one[key] = value[j : j + 1] if per_sample else value
        out.append(one)
    return out


def select_anchors(target: Tensor, count: int) -> Tensor:
    """Anchor frames ``(B, count, 3, H, W)`` of a target ``(B, 3, T, H, W)``.

    ``count == 1``: the first frame (as the released code). ``count > 1``: ``count`` evenly
    spaced frames from the first to the last, ``round(linspace(0, T - 1, count))``; frames
    repeat when ``count > T``, so a 1-frame image gives ``count`` copies of itself and every
    sample of a run has the same number of semantic tokens.
    """
    if count < 1:
        raise ValueError(f"select_anchors: anchor count must be >= 1, got {count}")
    if target.ndim != 5:
        raise ValueError(
            f"select_anchors: target must be (B, C, T, H, W), got {tuple(target.shape)}"
        )
    frames = target.shape[2]
    if count == 1:
        index = torch.zeros(1, dtype=torch.long)
    else:
        index = torch.linspace(0, frames - 1, count).round().long()
    return target.index_select(2, index.to(target.device)).transpose(1, 2).contiguous()


def with_token(token: str, texts: Iterable[str]) -> list[str]:
    """``token + " " + text`` for each text, or the token alone where the text is empty."""
    out = []
    for text in texts:
        text = text.strip()
        out.append(f"{token} {text}" if token and text else token or text)
    return out


def require(batch: Mapping[str, Any], keys: Iterable[str], task: str) -> None:
    """Raise a clear error when ``batch`` lacks one of ``keys`` (wrong stream for the task)."""
    missing = [key for key in keys if key not in batch]
    if missing:
        raise KeyError(
            f"task {task!r}: batch has no {missing} (keys: {sorted(batch)}); is the task reading "
            "the right stream?"
        )


def _import_object(path: str) -> Any:
    """The object named by ``"package.module.Name"`` (or ``"package.module:Name"``)."""
    module_name, sep, name = path.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ValueError(f"{path!r} is not a class path like 'package.module.Class'")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"cannot import {path!r}: {error}") from error


class Task(ABC):
    """Base class of a training objective.

    Subclasses set the class attributes and implement :meth:`prepare` (clip-stream tasks:
    subclass :class:`ClipCorruptionTask` and implement ``corrupt`` instead); their constructor
    arguments are the options YAML can set, ``weight`` always among them. :meth:`make_sample`
    assembles the :class:`EditSample` (anchors, ``is_image``) for a ``prepare`` of your own.

    Class attributes:
        name: unique registry name, also the key in logs (``train/<name>/fm_loss``).
        stream: the data stream it reads: ``clips``, ``video_pairs`` or ``image_pairs``.
        default_weight: sampling weight when the config gives none (relative; the sampler
            normalises).
        instruction_token: the prompt token put in front of the task's text.
        description: one line for ``sama tasks``.
        corrupts_source: True when the source is a corrupted copy of the target (pretext).
        deterministic: True when :meth:`prepare` draws nothing from its generator: the same
            batch gives the same sample whatever the generator (e.g. a 2x speed-up, a time
            reversal, an edit pair); False when the sample depends on the generator (a random
            mask or permutation). The task contract test checks the claim either way.

    Instance attributes: ``weight`` (the sampling weight in use) and ``anchor_frames`` (anchor
    frames per sample, set by :class:`~sama.module.SamaModule` from its own option).

    Randomness: :meth:`prepare` receives a ``torch.Generator``; draw every random choice from
    it, so the same generator seed gives the same sample.
    """

    name: ClassVar[str] = ""
    stream: str = "clips"
    default_weight: ClassVar[float] = 1.0
    instruction_token: ClassVar[str] = ""
    description: ClassVar[str] = ""
    corrupts_source: ClassVar[bool] = False
    deterministic: ClassVar[bool] = False

    def __init__(self, weight: float | None = None) -> None:
        what = type(self).__name__
        if not self.name:
            raise ValueError(f"{what}: a task class needs a non-empty `name`")
        if self.stream not in STREAMS:
            raise ValueError(
                f"task {self.name!r}: stream {self.stream!r} is not one of {list(STREAMS)}"
            )
        weight = self.default_weight if weight is None else float(weight)
        if not weight >= 0:
            raise ValueError(f"task {self.name!r}: weight must be >= 0, got {weight}")
        self.weight = weight
        self.anchor_frames = 1

    @abstractmethod
    def prepare(self, batch: Mapping[str, Any], generator: torch.Generator) -> EditSample:
        """Turn a batch of :attr:`stream` into an :class:`EditSample`."""

    def anchors(self, target: Tensor) -> Tensor:
        """``anchor_frames`` anchors ``(B, N, 3, H, W)`` of ``target`` (see :func:`select_anchors`)."""
        return select_anchors(target, self.anchor_frames)

    def make_sample(
        self,
        source: Tensor | None,
        target: Tensor,
        instructions: Iterable[str],
        loss_mask: Tensor | None = None,
        *,
        source_reusable: bool,
    ) -> EditSample:
        """The :class:`EditSample` of one micro-batch, with the parts every task shares.

        ``anchors`` are this task's ``anchor_frames`` frames of ``target`` (:meth:`anchors`),
        ``is_image`` is True for a 1-frame target. Layouts: ``source`` ``(B, 3, Ts, H, W)`` or
        ``None``, ``target`` ``(B, 3, T, H, W)``, both float32 in [-1, 1]; ``loss_mask``
        ``(B, 1, T, H, W)`` or ``None``; ``source_reusable`` as in :class:`EditSample`.
        """
        return EditSample(
            source=source,
            target=target,
            instructions=list(instructions),
            anchors=self.anchors(target),
            loss_mask=loss_mask,
            is_image=target.ndim == 5 and target.shape[2] == 1,
            source_reusable=source_reusable,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight:g})"


class ClipCorruptionTask(Task):
    """Base of a task on the ``clips`` stream: subclasses write only :meth:`corrupt`.

    :meth:`prepare` checks the batch (``video`` ``(B, 3, T, H, W)`` float32 in [-1, 1],
    ``caption``), calls :meth:`corrupt` for the source and loss mask, prefixes each caption with
    ``instruction_token`` (:func:`with_token`), takes the target (the clip itself) and its anchor
    frames, and marks the source reusable exactly when it is not a corruption
    (``corrupts_source = False``) or the corruption is ``deterministic``.

    Class attributes as :class:`Task`; here ``stream`` is ``"clips"`` and ``corrupts_source``
    True by default, and a subclass says whether its corruption is ``deterministic``.
    """

    stream = "clips"
    corrupts_source: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.stream != "clips":
            raise TypeError(
                f"{cls.__qualname__}: a ClipCorruptionTask reads the 'clips' stream, not "
                f"{cls.stream!r}; subclass tasks.Task and write prepare() for other streams"
            )

    @abstractmethod
    def corrupt(
        self, video: Tensor, generator: torch.Generator
    ) -> tuple[Tensor | None, Tensor | None]:
        """The source the model sees for ``video``, and the loss mask.

        Args:
            video: ``(B, 3, T, H, W)`` float32 in [-1, 1], the clips (also the target); never
                modify it in place.
            generator: draw every random choice from it (none when ``deterministic``).

        Returns:
            ``(source, loss_mask)``: ``source`` ``(B, 3, Ts, H, W)`` in [-1, 1] on ``video``'s
            device (``Ts = 4k + 1``), or ``None`` for no source tokens; ``loss_mask``
            ``(B, 1, T, H, W)`` weights >= 0, or ``None`` (the whole target counts).
        """

    def prepare(self, batch: Mapping[str, Any], generator: torch.Generator) -> EditSample:
        """The :class:`EditSample` of a ``clips`` batch: ``corrupt(video) -> video``."""
        require(batch, ("video", "caption"), self.name)
        video = batch["video"]
        source, loss_mask = self.corrupt(video, generator)
        return self.make_sample(
            source,
            video,
            with_token(self.instruction_token, batch["caption"]),
            loss_mask,
            source_reusable=not self.corrupts_source or self.deterministic,
        )


# ----------------------------------------------------------------------------- registry
class TaskInfo(NamedTuple):
    """A registered task class and where it comes from: ``"built-in"`` or a distribution name."""

    cls: type[Task]
    origin: str


_REGISTERED: dict[str, TaskInfo] = {}
_plugins_loaded = False


def _add(cls: Any, origin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"{cls!r} (from {origin}) is not a subclass of tasks.base.Task")
    if not cls.name:
        raise ValueError(f"task class {cls.__qualname__} (from {origin}) has an empty `name`")
    known = _REGISTERED.get(cls.name)
    if known is not None and known.cls is not cls:
        raise ValueError(
            f"task name {cls.name!r} is defined twice: by {known.origin} "
            f"({known.cls.__module__}.{known.cls.__qualname__}) and by {origin} "
            f"({cls.__module__}.{cls.__qualname__}); rename one of them"
        )
    if known is None:
        _REGISTERED[cls.name] = TaskInfo(cls, origin)


def _origin_of(cls: type) -> str:
    top = cls.__module__.split(".")[0]
    if top in ("tasks", "sama"):
        return BUILTIN_ORIGIN
    distributions = importlib.metadata.packages_distributions().get(top)
    return distributions[0] if distributions else f"module {cls.__module__}"


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a :class:`Task` subclass to the registry under ``cls.name``.

    The origin is ``"built-in"`` for this project's packages, else the distribution that
    installs the class's package (or its module name when none does).
    """
    _add(cls, _origin_of(cls))
    return cls


def _import_builtins() -> None:
    """Import every public module of the ``tasks`` package (the built-ins register on import),
    so a new built-in task is one file in ``tasks/`` and no other line."""
    package = importlib.import_module("tasks")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def _load_plugins() -> None:
    global _plugins_loaded
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry.dist.name if entry.dist is not None else f"entry point {entry.value}"
        try:
            cls = entry.load()
        except Exception as error:
            raise ImportError(
                f"task plugin {entry.name!r} of {origin} ({entry.value}) failed to load: "
                f"{error}; fix or uninstall {origin}"
            ) from error
        _add(cls, origin)
    _plugins_loaded = True


def available_tasks(*, refresh: bool = False) -> dict[str, TaskInfo]:
    """Every registered task, ``name -> TaskInfo(cls, origin)``, built-ins first.

    Plugins (entry-point group ``sama.tasks``) are loaded on the first call, and again with
    ``refresh=True`` (e.g. after a plugin was installed into a running process). Two classes
    with the same ``name`` raise a ``ValueError`` naming both origins.
    """
    if refresh or not _plugins_loaded:
        _import_builtins()
        _load_plugins()
    return dict(_REGISTERED)


def build_task(name_or_classpath: str, **kwargs: Any) -> Task:
    """A task from a registry name (``"tube_shuffle"``) or a class path
    (``"my_pkg.tasks.ReversePlayback"``); ``kwargs`` go to its constructor."""
    if "." in name_or_classpath or ":" in name_or_classpath:
        cls = _import_object(name_or_classpath)
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"build_task: {name_or_classpath} is not a tasks.base.Task subclass")
        return cls(**kwargs)
    registry = available_tasks()
    if name_or_classpath not in registry:
        raise ValueError(
            f"build_task: unknown task {name_or_classpath!r}; registered: {sorted(registry)} "
            "(`sama tasks` lists them, with their origin)"
        )
    return registry[name_or_classpath].cls(**kwargs)
