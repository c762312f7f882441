"""LoRA on SAMA's Wan backbone through peft.

:func:`apply_lora` injects peft LoRA layers into ``SamaTransformer.wan`` in place (the attention
and FFN linears of the Wan blocks by default) and freezes the rest of ``wan``; SAMA's own
modules (``segment_embedding``, ``siglip_feat_mlp``, ``semantic_head``) live outside ``wan`` and
stay fully trainable. ``wan`` remains a ``WanTransformer3DModel``: its state-dict keys of a
wrapped linear become ``...to_q.base_layer.weight`` (frozen) plus ``...to_q.lora_A.default.weight``
/ ``...lora_B.default.weight`` (trained).

Outputs of a LoRA model:

* merged weights (:func:`merged_state_dict`, :func:`save_merged`): ``W + (alpha / rank) * B @ A``
  under the plain key names, i.e. an ordinary ``SamaTransformer.save_pretrained`` folder that
  ``SamaTransformer.from_pretrained`` and ``sama edit --checkpoint`` load unchanged;
* a peft adapter folder (:func:`save_adapter`): ``adapter_model.safetensors`` +
  ``adapter_config.json`` exactly as ``PeftModel.save_pretrained`` writes them (loadable with
  ``peft.PeftModel.from_pretrained(wan, folder)``), plus ``sama_modules.safetensors`` with the
  trained SAMA modules; :func:`load_adapter` puts both onto a fresh base ``SamaTransformer``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from sama.files import atomic_write, write_checksums
from sama.model import SamaTransformer

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_DIR",
    "ADAPTER_WEIGHTS_NAME",
    "DEFAULT_TARGET_MODULES",
    "SAMA_MODULES_NAME",
    "LoraExport",
    "LoraSettings",
    "apply_lora",
    "base_key",
    "count_parameters",
    "has_lora",
    "load_adapter",
    "load_base_weights",
    "merged_state_dict",
    "save_adapter",
    "save_merged",
    "trainable_state_keys",
]

#: The attention (self and cross) and FFN linears of every Wan block.
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)
ADAPTER_DIR = "lora_adapter"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
SAMA_MODULES_NAME = "sama_modules.safetensors"
#: SamaTransformer's own modules, trained in full next to the adapter.
SAMA_MODULES: tuple[str, ...] = ("segment_embedding", "siglip_feat_mlp", "semantic_head")
_ADAPTER = "default"
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (``SamaModule(lora={...})``).

    rank: the adapter rank ``r`` (> 0); alpha: the scale numerator (the update is
    ``(alpha / rank) * B @ A``); dropout: dropout on the adapter input, in [0, 1);
    target_modules: names (or dotted suffixes) of the ``nn.Linear`` layers inside ``wan`` to wrap.
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGET_MODULES)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"lora.alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
            raise ValueError(
                f"lora.target_modules must be a non-empty list of module names, got {targets!r}"
            )
        if not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"lora.target_modules must hold non-empty strings, got {targets!r}")
        object.__setattr__(self, "target_modules", tuple(targets))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))

    @classmethod
    def parse(cls, value: LoraSettings | Mapping[str, Any] | None) -> LoraSettings | None:
        """``None`` (LoRA off), a settings object, or a mapping with the field names."""
        if value is None or isinstance(value, LoraSettings):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                f"lora must be a mapping {{rank, alpha, dropout, target_modules}} or null, got "
                f"{type(value).__name__}"
            )
        unknown = sorted(set(value) - {"rank", "alpha", "dropout", "target_modules"})
        if unknown:
            raise ValueError(
                f"lora: unknown key(s) {unknown}; expected rank, alpha, dropout, target_modules"
            )
        return cls(**dict(value))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
        )


def has_lora(model: nn.Module) -> bool:
    """Whether peft LoRA layers are injected anywhere in ``model``."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA into ``model.wan`` (a ``SamaTransformer``) in place and return ``model``.

    Afterwards only the LoRA matrices inside ``wan`` and the SAMA modules outside it require
    grad. Works on the meta device (``with torch.device("meta")``). Raises when a target name
    matches no linear layer of ``wan``.
    """
    from peft import inject_adapter_in_model

    wan = model.wan
    names = [name for name, module in wan.named_modules() if isinstance(module, nn.Linear)]
    for target in settings.target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ValueError(
                f"lora.target_modules: {target!r} matches no nn.Linear inside the Wan transformer "
                "(e.g. to_q, to_k, to_v, to_out.0, ffn.net.0.proj, ffn.net.2)"
            )
    wan.requires_grad_(False)
    inject_adapter_in_model(settings.peft_config(), wan, adapter_name=_ADAPTER)
    for name, param in wan.named_parameters():
        param.requires_grad_(".lora_" in name)
    for name in SAMA_MODULES:
        getattr(model, name).requires_grad_(True)
    model.lora_settings = settings
    return model


def base_key(key: str) -> str:
    """The plain (un-wrapped) key of a LoRA model's state-dict key: ``x.base_layer.w -> x.w``."""
    return key.replace(".base_layer.", ".")


def trainable_state_keys(module: nn.Module) -> set[str]:
    """State-dict keys of the parameters of ``module`` that require grad."""
    return {name for name, param in module.named_parameters() if param.requires_grad}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (works on the meta device)."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters())


def load_base_weights(model: nn.Module, state: Mapping[str, Tensor], source: str = "") -> None:
    """Load plain ``SamaTransformer`` weights (no LoRA keys) into a LoRA-wrapped ``model``.

    Every non-LoRA key of ``model`` must be in ``state`` and vice versa; the LoRA matrices are
    left as they are.
    """
    own = {k for k in model.state_dict() if ".lora_" not in k}
    by_plain = {base_key(k): k for k in own}
    plain = {k: v for k, v in state.items() if ".lora_" not in k}
    missing = sorted(set(by_plain) - set(plain))
    unexpected = sorted(set(plain) - set(by_plain))
    if missing or unexpected:
        raise ValueError(
            f"{source or 'base weights'}: do not fit this LoRA model's base (missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}); load the same base as the run"
        )
    remapped = {by_plain[k]: v for k, v in plain.items()}
    result = model.load_state_dict(remapped, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The weights of a LoRA ``SamaTransformer`` with every adapter merged, under plain keys.

    For each wrapped linear: ``W' = W + (alpha / rank) * B @ A`` (``peft``'s
    ``get_delta_weight``); all other tensors are returned as they are (detached, on CPU).
    """
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and _ADAPTER in module.lora_A:
            deltas[f"{name}.weight"] = module.get_delta_weight(_ADAPTER)
    merged: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        plain = base_key(key)
        value = value.detach()
        if plain in deltas:
            value = value + deltas[plain].to(value.dtype)
        merged[plain] = value.contiguous().cpu()
    return merged


def save_merged(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the merged weights of a LoRA ``SamaTransformer`` as ``SamaTransformer.save_pretrained``
    does (``model.safetensors`` + ``sama_config.json``): an ordinary, LoRA-free export."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        plain = SamaTransformer(
            model.wan_config, semantic_dim=model.semantic_dim, semantic_hidden=model.semantic_hidden
        )
    plain.load_state_dict(merged_state_dict(model), strict=True, assign=True)
    return plain.save_pretrained(directory)


def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the peft adapter of ``model.wan`` and the SAMA modules into ``directory``.

    ``adapter_config.json`` + ``adapter_model.safetensors`` are the files
    ``PeftModel.save_pretrained`` writes (keys ``base_model.model.<module>.lora_A.weight``);
    ``sama_modules.safetensors`` holds ``segment_embedding`` / ``siglip_feat_mlp`` /
    ``semantic_head``.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    settings: LoraSettings | None = getattr(model, "lora_settings", None)
    if settings is None or not has_lora(model.wan):
        raise ValueError("save_adapter: the model has no LoRA adapter (build it with lora=...)")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    adapter = get_peft_model_state_dict(model.wan, adapter_name=_ADAPTER)
    adapter = {_PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in adapter.items()}
    atomic_write(
        path / ADAPTER_WEIGHTS_NAME,
        lambda tmp: save_file(adapter, tmp, metadata={"format": "pt"}),
    )
    sama_state = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name in SAMA_MODULES
        for key, value in getattr(model, name).state_dict().items()
    }
    atomic_write(
        path / SAMA_MODULES_NAME,
        lambda tmp: save_file(sama_state, tmp, metadata={"format": "pt"}),
    )
    config = settings.peft_config()
    config.base_model_name_or_path = None
    config.save_pretrained(str(path))
    write_checksums(path)
    return path


class LoraExport:
    """What ``sama.export.write_export`` saves for a LoRA model: ``save_pretrained(dir)`` writes
    the merged weights (a plain ``SamaTransformer`` folder) and the adapter in
    ``dir/lora_adapter`` (its own ``SHA256SUMS``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        path = save_merged(self.model, directory)
        save_adapter(self.model, path / ADAPTER_DIR)
        return path


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Put the adapter of :func:`save_adapter` onto a fresh, LoRA-free base ``SamaTransformer``
    (in place; returns ``model``): LoRA is injected into ``model.wan`` from
    ``adapter_config.json`` and the adapter and SAMA-module weights are loaded (strictly)."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory)
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, SAMA_MODULES_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing; write the folder with save_adapter")
    if has_lora(model.wan):
        raise ValueError("load_adapter: the model already has LoRA layers; pass a fresh base")
    config = LoraConfig.from_pretrained(str(path))
    settings = LoraSettings(
        rank=int(config.r),
        alpha=float(config.lora_alpha),
        dropout=float(config.lora_dropout),
        target_modules=tuple(sorted(config.target_modules)),
    )
    apply_lora(model, settings)
    adapter = {
        k[len(_PEFT_PREFIX) :] if k.startswith(_PEFT_PREFIX) else k: v
        for k, v in load_file(path / ADAPTER_WEIGHTS_NAME).items()
    }
    result = set_peft_model_state_dict(model.wan, adapter, adapter_name=_ADAPTER)
    lora_missing = [k for k in result.missing_keys if ".lora_" in k]
    if lora_missing or result.unexpected_keys:
        raise ValueError(
            f"{path / ADAPTER_WEIGHTS_NAME}: does not fit this base (missing {lora_missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]})"
        )
    sama_state = load_file(path / SAMA_MODULES_NAME)
    for name in SAMA_MODULES:
        prefix = name + "."
        getattr(model, name).load_state_dict(
            {k[len(prefix) :]: v for k, v in sama_state.items() if k.startswith(prefix)},
            strict=True,
        )
    return model
