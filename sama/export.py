"""The exported-directory format: what an inference needs, written and read without training code.

An export (``SamaModule.export``, ``weights/tiny-editor``) is one folder::

    model.safetensors   the transformer weights            (SamaTransformer.save_pretrained)
    sama_config.json    the transformer's config            (SamaTransformer.save_pretrained)
    encoders.json       the frozen encoders: class_path + init_args of codec, text_encoder and
                        semantic_encoder, their identities; and the inference description:
                        anchor_frames (0 = trained without semantic anchoring),
                        semantic_tokens_per_frame, prompt_prefix, negative_prompt, sampling
                        (a SamplingSettings dict)
    SHA256SUMS          checksums of every other file, written last

An export is written into a temporary folder beside the destination and renamed into place, so
no half-written export ever carries the final name. Reading one verifies ``SHA256SUMS`` (when
present) before anything else, and builds only *trusted* encoder classes: classes defined in
:mod:`sama.encoders`, or published through the ``sama.encoders`` entry-point group. A class path
is checked before its module is imported or anything is called; ``os.system`` and the like are
refused with one line naming the file and field. Older exports (``encoders.json`` without the
inference fields) read with the semantic token count taken from the rebuilt semantic encoder
and the released defaults for the rest.

This module imports no training code (``sama.module``, ``tasks``, ``datamodules``); Lightning
checkpoints are read here too (:func:`read_checkpoint`, ``torch.load(weights_only=True)``), so
inference never needs the training side.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from accelerate import init_empty_weights

import sama.encoders as encoders_module
from sama.checkpoint_files import load_checkpoint_file
from sama.encoders import SemanticEncoder, TextEncoder, VideoCodec
from sama.files import (
    CHECKSUMS_FILE,
    ChecksumError,
    atomic_write_text,
    verify_checksums,
    write_checksums,
)
from sama.flow import SamplingSettings
from sama.model import SAMA_CONFIG_NAME, SamaTransformer

__all__ = [
    "CHECKSUMS_FILE",
    "EDIT_PREFIX",
    "ENCODERS_FILE",
    "ENCODER_KEYS",
    "ENTRY_POINT_GROUP",
    "NEGATIVE_PROMPT",
    "ChecksumError",
    "Encoders",
    "InferenceInfo",
    "LoadedEditor",
    "build_encoder",
    "describe",
    "inference_from_hparams",
    "load_encoders",
    "read_checkpoint",
    "read_export",
    "read_inference",
    "read_specs",
    "write_export",
]

ENCODERS_FILE = "encoders.json"
#: the three frozen encoders, as named in ``encoders.json`` and in a module's hyper-parameters
ENCODER_KEYS = ("codec", "text_encoder", "semantic_encoder")
#: entry-point group through which other distributions publish encoder classes
ENTRY_POINT_GROUP = "sama.encoders"
#: the prompt contract of the released code: the instruction is prefixed with EDIT_PREFIX, and
#: classifier-free guidance runs against NEGATIVE_PROMPT
EDIT_PREFIX = "[Video edit] "
NEGATIVE_PROMPT = "[Video edit]"

_FORMAT = "sama-export"
_FORMAT_VERSION = 2
_ENCODERS_MODULE = encoders_module.__name__
#: methods (on the class) and protocol (on the instance) each encoder role must have
_ROLES: dict[str, tuple[tuple[str, ...], type]] = {
    "codec": (("encode", "decode"), VideoCodec),
    "text_encoder": (("encode",), TextEncoder),
    "semantic_encoder": (("encode",), SemanticEncoder),
}
_INFERENCE_KEYS = (
    "anchor_frames",
    "semantic_tokens_per_frame",
    "prompt_prefix",
    "negative_prompt",
    "sampling",
)


class Encoders(NamedTuple):
    """The frozen encoders a pipeline needs next to the transformer."""

    codec: VideoCodec
    text: TextEncoder
    semantic: SemanticEncoder


@dataclass(frozen=True)
class InferenceInfo:
    """Everything an inference needs besides the weights and the encoders.

    Attributes:
        anchor_frames: anchor frames the model was trained with; 0 = trained without semantic
            anchoring (no semantic tokens are sampled).
        semantic_tokens_per_frame: the semantic encoder's ``tokens_per_frame`` (65 for a grid-8
            encoder / SigLIP, 17 for ``PooledPixelSemanticEncoder(grid=4)``).
        prompt_prefix / negative_prompt: the prompt contract (``"[Video edit] "`` + instruction;
            guidance against ``"[Video edit]"``).
        sampling: the sampler defaults.
    """

    anchor_frames: int = 0
    semantic_tokens_per_frame: int = 0
    prompt_prefix: str = EDIT_PREFIX
    negative_prompt: str = NEGATIVE_PROMPT
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def __post_init__(self) -> None:
        if self.anchor_frames < 0:
            raise ValueError(f"inference: anchor_frames must be >= 0, got {self.anchor_frames}")
        if self.anchor_frames > 0 and self.semantic_tokens_per_frame < 1:
            raise ValueError(
                f"inference: anchor_frames={self.anchor_frames} needs semantic_tokens_per_frame "
                "(the semantic encoder's tokens_per_frame) >= 1"
            )

    @property
    def semantic_tokens(self) -> int:
        """Semantic tokens sampled jointly with the video: ``anchor_frames * tokens_per_frame``."""
        return self.anchor_frames * self.semantic_tokens_per_frame

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields of ``encoders.json`` that describe the inference."""
        return {
            "anchor_frames": self.anchor_frames,
            "semantic_tokens_per_frame": self.semantic_tokens_per_frame,
            "prompt_prefix": self.prompt_prefix,
            "negative_prompt": self.negative_prompt,
            "sampling": self.sampling.to_dict(),
        }


@dataclass
class LoadedEditor:
    """A trained editor as read from disk: the transformer, the encoders a pipeline runs and
    the inference description. ``path`` is the export folder or checkpoint file it came from."""

    model: SamaTransformer
    codec: VideoCodec
    text_encoder: TextEncoder
    inference: InferenceInfo
    path: Path


# ----------------------------------------------------------------------------- describing
def describe(obj: Any, spec: Any = None) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuilds ``obj``.

    ``spec`` (the parsed config a CLI run saved, already in that form) wins; otherwise the init
    arguments are read back from attributes of the same names. Raises when any init argument
    is not such an attribute (e.g. ``WanVAECodec(path=...)``): a guessed default would rebuild
    a different encoder.
    """
    if isinstance(spec, Mapping) and "class_path" in spec:
        return {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args", {}))}
    cls = type(obj)
    init_args: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(obj, name):
            raise ValueError(
                f"cannot describe {cls.__qualname__} for export: its init argument {name!r} is not "
                "an attribute; build the module from a config (sama fit / SamaModule.from_config)"
            )
        init_args[name] = getattr(obj, name)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def inference_from_hparams(hparams: Mapping[str, Any], tokens_per_frame: int) -> InferenceInfo:
    """The inference description of a ``SamaModule``'s hyper-parameters (``anchor_frames``,
    ``semantic_weight``, ``sample_steps``, ``sample_shift``, ``guidance_scale``; the module's
    defaults where absent) and its semantic encoder's ``tokens_per_frame``."""
    anchor = int(hparams.get("anchor_frames", 1))
    if float(hparams.get("semantic_weight", 0.1)) == 0:
        anchor = 0
    sampling = SamplingSettings(
        steps=int(hparams.get("sample_steps", 50)),
        guidance=float(hparams.get("guidance_scale", 5.0)),
        shift=float(hparams.get("sample_shift", 5.0)),
    )
    return InferenceInfo(
        anchor_frames=anchor, semantic_tokens_per_frame=int(tokens_per_frame), sampling=sampling
    )


# ----------------------------------------------------------------------------- trusted building
def _entry_point_classes() -> dict[str, metadata.EntryPoint]:
    """``normalised class path -> entry point`` of the ``sama.encoders`` group."""
    found = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[entry.value.replace(":", ".").strip()] = entry
    return found


def _trusted_class(spec: Any, role: str, where: str) -> type:
    """The encoder class ``spec`` names, after checking it may be loaded (nothing is called,
    and no module but ``sama.encoders`` or a published entry point's is imported)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: field {role!r} must be an object with class_path and init_args")
    path = spec.get("class_path")
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{where}: field {role!r}.class_path must be a class path string")
    dotted = path.replace(":", ".").strip()
    module_name, _, name = dotted.rpartition(".")
    refusal = (
        f"{where}: field {role!r}.class_path {path!r} is not an encoder class of "
        f"{_ENCODERS_MODULE} or of a {ENTRY_POINT_GROUP!r} entry point; refusing to load it"
    )
    if module_name == _ENCODERS_MODULE and name and not name.startswith("_"):
        cls = getattr(encoders_module, name, None)
        if not isinstance(cls, type) or cls.__module__ != _ENCODERS_MODULE:
            raise ValueError(refusal)
    else:
        entry = _entry_point_classes().get(dotted)
        if entry is None:
            raise ValueError(refusal)
        cls = entry.load()
        if not isinstance(cls, type):
            raise ValueError(refusal)
    methods, _ = _ROLES[role]
    missing = [m for m in methods if not callable(getattr(cls, m, None))]
    if missing or inspect.isabstract(cls):
        raise ValueError(
            f"{where}: field {role!r}.class_path {path!r} is not a {role} (it lacks "
            f"{missing or 'concrete methods'}); name a {role} class"
        )
    return cls


def _init_args(spec: Mapping[str, Any], role: str, where: str) -> dict[str, Any]:
    init_args = spec.get("init_args", {}) or {}
    if not isinstance(init_args, Mapping) or not all(isinstance(k, str) for k in init_args):
        raise ValueError(f"{where}: field {role!r}.init_args must be an object of named arguments")
    return dict(init_args)


def build_encoder(spec: Any, role: str, where: str = ENCODERS_FILE) -> Any:
    """Build the ``role`` encoder (``"codec"``, ``"text_encoder"`` or ``"semantic_encoder"``)
    that ``spec = {"class_path", "init_args"}`` names, refusing untrusted classes (see module
    docstring). ``where`` names the file in error messages."""
    if role not in _ROLES:
        raise ValueError(f"build_encoder: role must be one of {sorted(_ROLES)}, got {role!r}")
    cls = _trusted_class(spec, role, where)
    init_args = _init_args(spec, role, where)
    try:
        encoder = cls(**init_args)
    except TypeError as error:
        raise ValueError(f"{where}: field {role!r}: cannot build {cls.__name__}: {error}") from None
    protocol = _ROLES[role][1]
    if not isinstance(encoder, protocol):
        raise ValueError(
            f"{where}: field {role!r}: {cls.__name__} does not implement {protocol.__name__} "
            "(missing attributes); name a class that does"
        )
    return encoder


def _tokens_per_frame(spec: Any, where: str) -> int:
    """The semantic encoder's ``tokens_per_frame``: a class attribute when it has one (no
    weights are loaded), else read from the built (trusted) encoder."""
    cls = _trusted_class(spec, "semantic_encoder", where)
    value = getattr(cls, "tokens_per_frame", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(build_encoder(spec, "semantic_encoder", where).tokens_per_frame)


# ----------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_specs(directory: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """``(path of encoders.json, its parsed fields)`` after verifying ``SHA256SUMS`` (when
    present) and checking that the three encoder specs name trusted classes; nothing is built.
    Use it wherever an export's encoder specs are handed on (e.g. to a config)."""
    directory = Path(directory)
    path = directory / ENCODERS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: no {ENCODERS_FILE}; export the model with SamaModule.export(dir)"
        )
    if (directory / CHECKSUMS_FILE).is_file():
        verify_checksums(directory)
    specs = _read_json(path)
    where = str(path)
    for key in ENCODER_KEYS:
        if key not in specs:
            raise ValueError(f"{where}: field {key!r} is missing")
        _trusted_class(specs[key], key, where)
    return path, specs


def _inference_of(specs: Mapping[str, Any], where: str) -> InferenceInfo:
    try:
        anchor = int(specs.get("anchor_frames", 1))
        tokens = specs.get("semantic_tokens_per_frame")
        tokens = _tokens_per_frame(specs["semantic_encoder"], where) if tokens is None else tokens
        sampling = SamplingSettings.from_dict(specs.get("sampling"))
        return InferenceInfo(
            anchor_frames=anchor,
            semantic_tokens_per_frame=int(tokens),
            prompt_prefix=str(specs.get("prompt_prefix", EDIT_PREFIX)),
            negative_prompt=str(specs.get("negative_prompt", NEGATIVE_PROMPT)),
            sampling=sampling,
        )
    except (TypeError, ValueError) as error:
        if str(error).startswith(where):
            raise
        raise ValueError(f"{where}: {error}") from None


def read_inference(directory: str | os.PathLike[str]) -> InferenceInfo:
    """The inference description of an export (checksums verified first)."""
    path, specs = read_specs(directory)
    return _inference_of(specs, str(path))


def load_encoders(directory: str | os.PathLike[str]) -> Encoders:
    """Rebuild the three frozen encoders of an export (checksums verified, classes trusted)."""
    path, specs = read_specs(directory)
    return Encoders(*(build_encoder(specs[key], key, str(path)) for key in ENCODER_KEYS))


def read_export(directory: str | os.PathLike[str]) -> LoadedEditor:
    """Read an export for inference: ``SHA256SUMS`` is verified and every encoder class checked
    before anything is loaded; the codec and text encoder are built (the semantic encoder only
    when an older export does not record its token count)."""
    path, specs = read_specs(directory)
    where = str(path)
    inference = _inference_of(specs, where)
    codec = build_encoder(specs["codec"], "codec", where)
    text_encoder = build_encoder(specs["text_encoder"], "text_encoder", where)
    model = SamaTransformer.from_pretrained(path.parent)
    return LoadedEditor(model, codec, text_encoder, inference, path.parent)


def read_checkpoint(path: str | os.PathLike[str]) -> LoadedEditor:
    """Read a ``SamaModule`` Lightning checkpoint for inference, without training code.

    The file is loaded with ``torch.load(weights_only=True)`` (no code runs); the encoders are
    built from the hyper-parameters' specs (trusted classes only), the transformer from
    ``hyper_parameters["model"]["wan_config"]`` and the ``model.*`` weights of ``state_dict``
    (the EMA weights when the run averaged them).
    """
    path = Path(path)
    checkpoint = load_checkpoint_file(path, what="--checkpoint")
    if "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    if checkpoint.get("sama_lora") is not None:
        raise ValueError(
            f"{path}: a LoRA checkpoint holds only the trainable weights; export it first "
            "(SamaModule.load_from_checkpoint(path).export(DIR)) and pass the export folder"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    where = f"{path} hyper_parameters"
    missing = [key for key in ENCODER_KEYS if not isinstance(hparams.get(key), Mapping)]
    if missing:
        raise ValueError(
            f"{where}: no encoder spec for {missing}; train with a config (sama fit / "
            "SamaModule.from_config) or load the module and export it"
        )
    for key in ENCODER_KEYS:
        _trusted_class(hparams[key], key, where)
    options = dict(hparams.get("model") or {})
    if "wan_config" not in options:
        raise ValueError(f"{where}: field 'model.wan_config' is missing; re-save the checkpoint")
    state = {
        key[len("model.") :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    projector = state.get("siglip_feat_mlp.fc1.weight")
    if projector is None:
        raise ValueError(f"{path}: state_dict has no model.siglip_feat_mlp weights")
    with init_empty_weights(include_buffers=False):
        model = SamaTransformer(
            options["wan_config"],
            semantic_dim=int(projector.shape[1]),
            semantic_hidden=int(projector.shape[0]),
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{path}: weights do not fit model.wan_config ({first})") from None
    if options.get("attention_backend"):
        model.set_attention_backend(options["attention_backend"])
    tokens = _tokens_per_frame(hparams["semantic_encoder"], where)
    inference = inference_from_hparams(hparams, tokens)
    codec = build_encoder(hparams["codec"], "codec", where)
    text_encoder = build_encoder(hparams["text_encoder"], "text_encoder", where)
    return LoadedEditor(model, codec, text_encoder, inference, path)


# ----------------------------------------------------------------------------- writing
def _is_export(directory: Path) -> bool:
    return (directory / ENCODERS_FILE).is_file() or (directory / SAMA_CONFIG_NAME).is_file()


def write_export(
    directory: str | os.PathLike[str],
    model: SamaTransformer,
    encoders: Encoders,
    inference: InferenceInfo,
    *,
    specs: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write an export of ``model`` + ``encoders`` into ``directory`` (see module docstring).

    ``specs``: the ``{class_path, init_args}`` of each encoder key when known (a config's);
    otherwise they are read back from the encoders (:func:`describe`). ``extra_files``: more
    text files (e.g. ``summary.json``), checksummed with the rest. Everything is written into a
    temporary folder beside ``directory`` and renamed into place; an existing export there is
    replaced, any other non-empty folder is refused.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"export: {directory} is a file; give a folder path")
    if directory.is_dir() and any(directory.iterdir()) and not _is_export(directory):
        raise FileExistsError(
            f"export: {directory} is a non-empty folder that is not an export; choose another"
        )
    specs = dict(specs or {})
    description: dict[str, Any] = {"format": _FORMAT, "version": _FORMAT_VERSION}
    for key, encoder in zip(ENCODER_KEYS, encoders, strict=True):
        description[key] = describe(encoder, specs.get(key))
        _trusted_class(description[key], key, f"export of {type(encoder).__name__}")
    description["identity"] = {
        key: encoder.identity for key, encoder in zip(ENCODER_KEYS, encoders, strict=True)
    }
    description.update(inference.to_dict())
    text = json.dumps(description, indent=2, default=str) + "\n"

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    old: Path | None = None
    try:
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)
        model.save_pretrained(tmp)
        atomic_write_text(tmp / ENCODERS_FILE, text)
        for name, content in (extra_files or {}).items():
            if "/" in name or name in (CHECKSUMS_FILE, ENCODERS_FILE, ".", ".."):
                raise ValueError(f"export: extra file name {name!r} is not a plain new file name")
            atomic_write_text(tmp / name, content)
        write_checksums(tmp)
        if directory.exists():
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old."))
            os.rename(directory, old / directory.name)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists() and (old / directory.name).exists():
            os.rename(old / directory.name, directory)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return directory
