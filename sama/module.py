"""SamaModule: the LightningModule that trains SAMA on a weighted mix of tasks.

One training step (``docs/architecture.md``): the batch names its task; the task prepares an
:class:`~tasks.base.EditSample` (pretext corruptions run here, on the device); the frozen codec,
text encoder and semantic encoder encode it; one flow time ``t`` per sample noises the target
latents and the anchor semantic tokens alike; :class:`~sama.model.SamaTransformer` predicts both
velocities and the loss is::

    L = masked_mse(v, x1 - x0, latent loss mask) + semantic_weight * |v_sem - (s1 - s0)|_1

The frozen encoders are plain attributes, not registered submodules: they never enter the
Lightning checkpoint, the optimizer or an EMA copy (``EMAWeightAveraging`` deep-copies the
module; the encoders are shared by reference, not copied).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from sama.checkpoint_io import load_checkpoint_file
from sama.encoders import SemanticEncoder, TextEncoder, VideoCodec
from sama.export import ENCODER_KEYS, Encoders, inference_from_hparams, write_export
from sama.flow import (
    add_noise,
    masked_mse,
    sample_timesteps,
    to_wan_timestep,
    velocity_target,
)
from sama.latent_cache import CachedCodec, CachedTextEncoder, LatentCache
from sama.lora import LoraExport, LoraSettings, apply_lora, load_base_weights
from sama.model import SamaTransformer
from sama.pipeline import EditPipeline
from sama.seeds import stable_seed
from tasks.base import EditSample, Task, split_batch
from tasks.sampler import TaskSampler

__all__ = [
    "SamaModule",
    "Encoded",
    "latent_loss_mask",
]

_OBJECT_KEYS = (*ENCODER_KEYS, "tasks")


class Encoded(NamedTuple):
    """A sample after the frozen encoders (all on the module's device).

    target ``(B, c, t, h, w)`` clean latents; source ``(B, c, ts, h, w)`` or None; text
    ``(B, L, D_text)`` and text_mask ``(B, L)``; semantic ``(B, N*65, D_sem)`` or None (no
    semantic loss); loss_mask ``(B, 1, t, h, w)`` on the latent grid or None.
    """

    target: Tensor
    source: Tensor | None
    text: Tensor
    text_mask: Tensor
    semantic: Tensor | None
    loss_mask: Tensor | None


class _Shared:
    """Holds objects that a ``deepcopy`` of the module must share, not copy (frozen encoders)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def _seed_of(*parts: int) -> int:
    """A 63-bit seed derived from integers alone (platform independent)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(parts)}q", *parts), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def lr_factor_fn(
    warmup_steps: int, schedule: str = "constant", total_steps: int = 0, min_ratio: float = 0.1
) -> Callable[[int], float]:
    """The learning-rate multiplier as a function of the optimizer step.

    A linear warm-up over ``warmup_steps``, then ``1.0`` (``"constant"``) or a half-cosine from
    ``1.0`` to ``min_ratio`` reached at ``total_steps`` (``"cosine"``; held there after).
    """

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def latent_loss_mask(mask: Tensor, codec: VideoCodec) -> Tensor:
    """Pixel loss mask ``(B, 1, T, H, W)`` -> the codec's latent grid ``(B, 1, t, h, w)``.

    Frames are grouped as the codec groups them (the first frame alone, then groups of
    ``temporal_factor``) and each latent position gets the mean of its pixels' weights.
    """
    tf, sf = codec.temporal_factor, codec.spatial_factor
    first = mask[:, :, :1].expand(-1, -1, tf, -1, -1)
    grouped = torch.cat([first, mask[:, :, 1:]], dim=2).float()
    return F.avg_pool3d(grouped, kernel_size=(tf, sf, sf), stride=(tf, sf, sf))


class SamaModule(pl.LightningModule):
    """Trains :class:`~sama.model.SamaTransformer` on a weighted mix of :class:`~tasks.base.Task`.

    Args:
        model: ``SamaTransformer`` kwargs (``wan_config``, optionally ``semantic_hidden`` and
            ``attention_backend``); ``semantic_dim`` comes from ``semantic_encoder.dim``.
        pretrained: local directory for ``SamaTransformer.from_pretrained`` (a diffusers Wan
            transformer or a SAMA export) instead of ``model``; ``model`` may still give
            ``semantic_hidden`` / ``attention_backend``.
        codec: frozen video codec (``latent_channels`` must equal Wan's in/out channels).
        text_encoder: frozen text encoder (``dim`` must equal Wan's ``text_dim``).
        semantic_encoder: frozen anchor-frame encoder; its ``dim`` sets the semantic width.
        tasks: the task mix; each task's ``weight`` is its sampling weight.
        seed: seed of the task sequence and of every random draw in a step.
        semantic_weight: lambda of the semantic loss; 0 ablates semantic anchoring (the
            semantic encoder is then never run and no semantic tokens enter the model).
        anchor_frames: anchor frames per sample (set on every task).
        timestep_distribution / timestep_shift: see ``sama.flow.sample_timesteps``.
        init_from: weights to start from at ``fit``: a Lightning checkpoint (its ``model.*``
            weights; EMA weights when the run used ``EMAWeightAveraging``) or an exported /
            ``save_pretrained`` directory. Skipped when resuming with ``ckpt_path``.
        gradient_checkpointing: recompute transformer blocks in backward.
        val_timesteps: flow times ``t`` (1 = clean) at which validation measures the loss.
        lr / weight_decay / warmup_steps: AdamW with a linear warm-up to ``lr``.
        lr_schedule: ``"constant"`` after the warm-up, or ``"cosine"``: a half-cosine from
            ``lr`` down to ``min_lr_ratio * lr`` at the trainer's ``max_steps`` (which must
            then be set). The schedule is a pure function of the global step, so a run resumed
            with a longer or shorter ``max_steps`` follows the new curve from where it is.
        sample_steps / sample_shift / guidance_scale: the flow sampler of ``predict`` (the
            released inference: 50 steps, shift 5, CFG 5 against the negative prompt
            ``"[Video edit]"``).
        cache_dir: a :class:`~sama.latent_cache.LatentCache` folder; codec latents of targets
            and reusable sources (``EditSample.source_reusable``: edit pairs, deterministic
            corruptions) and text states are then read from / written to it, keyed by content
            hash and encoder identity (the same losses, fewer encoder calls; flushed at
            validation and train end). Sources corrupted at random each step are encoded with
            the plain codec and never stored.
        lora: ``{rank, alpha, dropout, target_modules}`` (see :class:`~sama.lora.LoraSettings`)
            to train peft LoRA adapters on the Wan blocks instead of the full backbone (SAMA's
            own modules stay fully trainable); ``None`` = full fine-tuning. Checkpoints then hold
            the trainable weights only: the base comes from ``pretrained`` / ``init_from``
            again on load. ``export`` writes merged weights plus a peft adapter folder.
    """

    def __init__(
        self,
        codec: VideoCodec,
        text_encoder: TextEncoder,
        semantic_encoder: SemanticEncoder,
        tasks: list[Task],
        model: dict[str, Any] | None = None,
        pretrained: str | None = None,
        seed: int = 0,
        semantic_weight: float = 0.1,
        anchor_frames: int = 1,
        timestep_distribution: str = "logit_normal",
        timestep_shift: float = 1.0,
        init_from: str | None = None,
        gradient_checkpointing: bool = False,
        val_timesteps: list[float] | None = None,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        min_lr_ratio: float = 0.1,
        sample_steps: int = 50,
        sample_shift: float = 5.0,
        guidance_scale: float = 5.0,
        cache_dir: str | None = None,
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        # Built from objects (not through the CLI / from_config): keep the plain settings only,
        # never the encoders' weights; a loaded checkpoint restores the specs (on_load_checkpoint).
        for key in _OBJECT_KEYS:
            if not _is_spec(self.hparams.get(key)):
                self.hparams.pop(key, None)

        if semantic_weight < 0:
            raise ValueError(f"SamaModule: semantic_weight must be >= 0, got {semantic_weight}")
        if timestep_distribution not in ("logit_normal", "uniform"):
            raise ValueError(
                "SamaModule: timestep_distribution must be 'logit_normal' or 'uniform', got "
                f"{timestep_distribution!r}"
            )
        if not tasks:
            raise ValueError("SamaModule: tasks is empty; give at least one task")
        names = [task.name for task in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"SamaModule: task(s) {duplicates} listed twice in tasks")

        self._encoders = _Shared(Encoders(codec, text_encoder, semantic_encoder))
        self._encoders_device: torch.device | None = None
        # training / validation encode through the on-disk latent cache when one is configured
        self._latent_cache = None
        compute = Encoders(codec, text_encoder, semantic_encoder)
        if cache_dir is not None:
            self._latent_cache = LatentCache(cache_dir)
            compute = Encoders(
                CachedCodec(codec, self._latent_cache),
                CachedTextEncoder(text_encoder, self._latent_cache),
                semantic_encoder,
            )
        self._compute_encoders = _Shared(compute)
        self.tasks = list(tasks)
        for task in self.tasks:
            task.anchor_frames = anchor_frames
        self.tasks_by_name: dict[str, Task] = {task.name: task for task in self.tasks}
        self.task_sampler = TaskSampler(
            {t.name: t.weight for t in self.tasks}, {t.name: t.stream for t in self.tasks}, seed
        )
        self.task_counts: dict[str, int] = dict.fromkeys(names, 0)
        # per-task (fm_loss, sem_loss) of the micro-batches of the current optimizer step
        self._task_losses: dict[str, list[tuple[Tensor, Tensor]]] = {}

        self.seed = seed
        self.semantic_weight = semantic_weight
        self.anchor_frames = anchor_frames
        self.timestep_distribution = timestep_distribution
        self.timestep_shift = timestep_shift
        self.init_from = init_from
        self.val_timesteps = [0.25, 0.5, 0.75] if val_timesteps is None else list(val_timesteps)
        if not self.val_timesteps or not all(0.0 <= t <= 1.0 for t in self.val_timesteps):
            raise ValueError(f"SamaModule: val_timesteps must be in [0, 1], got {val_timesteps}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"SamaModule: lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"SamaModule: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.lr_schedule = lr_schedule
        self.min_lr_ratio = min_lr_ratio
        self.sample_steps = sample_steps
        self.sample_shift = sample_shift
        self.guidance_scale = guidance_scale

        self.model = self._build_model(model, pretrained, semantic_encoder.dim)
        self._check_sizes(codec, text_encoder)
        self.lora_settings = LoraSettings.parse(lora)
        self._lora_base_loaded = False
        if self.lora_settings is not None:
            apply_lora(self.model, self.lora_settings)
            # LoRA checkpoints leave the frozen base out: strategies that load the weights
            # themselves (FSDP2) must accept that; _lora_complete_checkpoint checks the rest
            self.strict_loading = False
        if gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        if semantic_weight == 0:
            # Ablation: no semantic tokens enter the model, so these get no gradient (and DDP
            # would report them as unused).
            self.model.siglip_feat_mlp.requires_grad_(False)
            self.model.semantic_head.requires_grad_(False)

    # ------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SamaModule:
        """Build from a config dict (the ``model`` section of a YAML: ``codec: {class_path,
        init_args}``, ...). The config is kept as hyper-parameters, so checkpoints of this
        module load with ``SamaModule.load_from_checkpoint(path)``."""
        from jsonargparse import ArgumentParser
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "module", fail_untyped=False)
        parsed = parser.parse_object({"module": dict(config)})
        hparams = parser.dump(parsed, format="json")
        with _given_hyperparameters_context(
            hparams=json.loads(hparams)["module"],
            instantiator="lightning.pytorch.cli.instantiate_module",
        ):
            return parser.instantiate(parsed).module

    @staticmethod
    def _build_model(
        model: Mapping[str, Any] | None, pretrained: str | None, semantic_dim: int
    ) -> SamaTransformer:
        options = dict(model or {})
        if pretrained is not None:
            if "wan_config" in options:
                raise ValueError(
                    "SamaModule: give model.wan_config or pretrained, not both (pretrained "
                    "brings its own Wan config)"
                )
            return SamaTransformer.from_pretrained(pretrained, semantic_dim=semantic_dim, **options)
        if "wan_config" not in options:
            raise ValueError(
                "SamaModule: model.wan_config is required (WanTransformer3DModel kwargs) unless "
                "pretrained points to a local model directory"
            )
        return SamaTransformer(options.pop("wan_config"), semantic_dim=semantic_dim, **options)

    def _check_sizes(self, codec: VideoCodec, text_encoder: TextEncoder) -> None:
        config = self.model.wan.config
        channels = codec.latent_channels
        if config.in_channels != channels or config.out_channels != channels:
            raise ValueError(
                f"SamaModule: model.wan_config in_channels={config.in_channels} / out_channels="
                f"{config.out_channels} must equal codec.latent_channels={channels} "
                f"({type(codec).__name__}); set both to {channels}"
            )
        if config.text_dim != text_encoder.dim:
            raise ValueError(
                f"SamaModule: model.wan_config text_dim={config.text_dim} must equal "
                f"text_encoder.dim={text_encoder.dim} ({type(text_encoder).__name__})"
            )

    @property
    def encoders(self) -> Encoders:
        """``(codec, text, semantic)``: the frozen encoders (not part of the checkpoint)."""
        return self._encoders.value

    def _sync_encoders(self) -> Encoders:
        """Move the frozen encoders to the module's device (once per device change)."""
        if self._encoders_device != self.device:
            for encoder in self._compute_encoders.value:
                if isinstance(encoder, torch.nn.Module):
                    encoder.to(self.device)
            self._encoders_device = self.device
        return self._compute_encoders.value

    def flush_cache(self) -> None:
        """Write pending latent-cache entries to disk (no-op without ``cache_dir``)."""
        if self._latent_cache is not None:
            self._latent_cache.flush()

    def on_train_end(self) -> None:
        self.flush_cache()

    def on_validation_end(self) -> None:
        self.flush_cache()

    # ------------------------------------------------------------------------- lifecycle
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.init_from is None:
            return
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        if resuming and self.lora_settings is None:
            return  # resuming: the checkpoint has the weights (a LoRA one has no base weights)
        self.load_weights(self.init_from)

    def load_weights(self, source: str | os.PathLike[str]) -> None:
        """Load transformer weights from a Lightning checkpoint or an exported directory."""
        path = Path(source)
        if path.is_dir():
            state = SamaTransformer.from_pretrained(path).state_dict()
        elif path.is_file():
            checkpoint = load_checkpoint_file(path, what="init_from")
            if "state_dict" not in checkpoint:
                raise ValueError(f"init_from {path}: not a Lightning checkpoint (no 'state_dict')")
            state = {
                key[len("model.") :]: value
                for key, value in checkpoint["state_dict"].items()
                if key.startswith("model.")
            }
        else:
            raise FileNotFoundError(
                f"init_from {path}: no such checkpoint file or export directory; train stage 0 "
                "first or fix model.init_from"
            )
        if self.lora_settings is not None:
            load_base_weights(self.model, state, f"init_from {path}")
            self._lora_base_loaded = True
            return
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"init_from {path}: weights do not fit this model (different wan_config or "
                f"semantic encoder?): {error}"
            ) from error

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the task counts, and make the hyper-parameters self-contained: the resolved
        ``wan_config`` replaces ``pretrained`` (``load_from_checkpoint`` never re-reads the
        pretrained directory; the weights come from the checkpoint anyway)."""
        checkpoint["sama_task_counts"] = dict(self.task_counts)
        if self.lora_settings is not None:
            self._lora_filter_checkpoint(checkpoint)
            return  # the base is re-read from pretrained / init_from: keep them
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and hparams.get("pretrained") is not None:
            model = dict(hparams.get("model") or {})
            model["wan_config"] = self.model.wan_config
            model["semantic_hidden"] = self.model.semantic_hidden
            checkpoint["hyper_parameters"] = {**hparams, "model": model, "pretrained": None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.task_counts.update(checkpoint.get("sama_task_counts", {}))
        saved = checkpoint.get("hyper_parameters", {})
        for key in _OBJECT_KEYS:
            if key not in self.hparams and _is_spec(saved.get(key)):
                self.hparams[key] = saved[key]
        if self.lora_settings is not None:
            self._lora_complete_checkpoint(checkpoint)

    # ------------------------------------------------------------------------- LoRA
    def _lora_filter_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable weights (LoRA matrices + SAMA modules) in the checkpoint's
        ``state_dict`` (and ``current_model_state`` of an EMA callback); record the settings.
        A sharded (DCP) checkpoint keeps everything: resuming it loads every key."""
        checkpoint["sama_lora"] = self.lora_settings.to_dict()
        if any(type(v).__name__ == "DTensor" for v in checkpoint.get("state_dict", {}).values()):
            return  # a sharded FSDP2 checkpoint: each rank writes its shards of everything
        keep = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        for field in ("state_dict", "current_model_state"):
            state = checkpoint.get(field)
            if isinstance(state, dict):
                checkpoint[field] = {
                    k: v for k, v in state.items() if k in keep or not k.startswith("model.")
                }

    def _lora_complete_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill the frozen base weights a LoRA checkpoint leaves out from this module (built
        from ``pretrained``, plus ``init_from`` when set), so strict loading works."""
        if not isinstance(checkpoint.get("state_dict"), dict):
            return  # a sharded checkpoint: the strategy loads the tensors itself
        saved = checkpoint.get("sama_lora")
        if saved is not None and LoraSettings.parse(saved) != self.lora_settings:
            raise ValueError(
                f"checkpoint LoRA settings {saved} differ from this module's "
                f"{self.lora_settings.to_dict()}; build the module with the same lora"
            )
        own = self.state_dict()
        missing = [k for k in own if k not in checkpoint["state_dict"]]
        if not missing:
            return
        if self.init_from is None and self.hparams.get("pretrained") is None:
            raise ValueError(
                "SamaModule: this LoRA checkpoint holds no base weights and the module has "
                "neither pretrained nor init_from to read them from; set the run's base"
            )
        if self.init_from is not None and not self._lora_base_loaded:
            self.load_weights(self.init_from)
            own = self.state_dict()
        for field in ("state_dict", "current_model_state"):
            state = checkpoint.get(field)
            if isinstance(state, dict):
                for key in missing:
                    state.setdefault(key, own[key])

    # ------------------------------------------------------------------------- steps
    def _step_generator(self, *parts: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_seed_of(self.seed, *parts))
        return generator

    def encode(self, sample: EditSample) -> Encoded:
        """Run the frozen encoders on ``sample`` (no grad); the semantic encoder only when
        ``semantic_weight > 0``. With a latent cache, a source that is not
        ``sample.source_reusable`` (drawn afresh each step) goes through the plain codec, so
        the cache holds only what comes back: targets, reusable sources and texts."""
        codec, text_encoder, semantic_encoder = self._sync_encoders()
        with torch.no_grad():
            x1 = codec.encode(sample.target.to(self.device)).float()
            source = None
            if sample.source is not None:
                source_codec = codec if sample.source_reusable else self.encoders.codec
                source = source_codec.encode(sample.source.to(self.device)).float()
            states, text_mask = text_encoder.encode(list(sample.instructions))
            semantic = None
            if self.semantic_weight > 0:
                semantic = semantic_encoder.encode(sample.anchors.to(self.device)).float()
            mask = None
            if sample.loss_mask is not None:
                mask = latent_loss_mask(sample.loss_mask.to(self.device), codec)
        return Encoded(
            x1, source, states.to(self.device), text_mask.to(self.device), semantic, mask
        )

    def flow_losses(
        self,
        encoded: Encoded,
        generator: torch.Generator | Sequence[torch.Generator],
        t: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Flow-matching and semantic losses (scalars, float32) of encoded inputs.

        ``t``: ``(B,)`` flow times (1 = clean), drawn with ``generator`` when ``None``; the noise
        of the target latents and then of the semantic tokens comes from ``generator``, and both
        are noised with the same ``t``. ``generator`` is one generator for the batch, or one per
        sample (``B`` of them): sample ``b`` then draws its time, latent noise and semantic
        noise, in that order, from ``generator[b]`` alone, so what it draws does not depend on
        the other samples of its batch.
        """
        x1, s1 = encoded.target, encoded.semantic
        if isinstance(generator, torch.Generator):
            t, x0, s0 = self._draw_noise(x1, s1, generator, t)
        else:
            if len(generator) != x1.shape[0]:
                raise ValueError(
                    f"flow_losses: {len(generator)} generators for a batch of {x1.shape[0]}"
                )
            draws = [
                self._draw_noise(
                    x1[b : b + 1],
                    None if s1 is None else s1[b : b + 1],
                    g,
                    None if t is None else t[b : b + 1],
                )
                for b, g in enumerate(generator)
            ]
            t = torch.cat([d[0] for d in draws])
            x0 = torch.cat([d[1] for d in draws])
            s0 = None if s1 is None else torch.cat([d[2] for d in draws])
        semantic_t = None if s1 is None else add_noise(s1, s0, t)
        out = self.model(
            add_noise(x1, x0, t),
            to_wan_timestep(t),
            encoded.text,
            source_latents=encoded.source,
            semantic_tokens=semantic_t,
            text_mask=encoded.text_mask,
        )
        fm_loss = masked_mse(out.velocity, velocity_target(x1, x0), encoded.loss_mask)
        if s1 is None:
            return fm_loss, fm_loss.new_zeros(())
        sem_loss = (out.semantic.float() - velocity_target(s1, s0)).abs().mean()
        return fm_loss, sem_loss

    def _draw_noise(
        self, x1: Tensor, s1: Tensor | None, generator: torch.Generator, t: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(t, x0, s0)`` for ``x1`` ``(B, C, T, h, w)`` and ``s1`` ``(B, N, D)`` or ``None``,
        drawn from ``generator`` in that order (``t`` only when not given)."""
        if t is None:
            t = sample_timesteps(
                x1.shape[0],
                distribution=self.timestep_distribution,
                shift=self.timestep_shift,
                generator=generator,
                device=self.device,
            )
        t = t.to(self.device, torch.float32)
        x0 = torch.randn(x1.shape, generator=generator, device=self.device)
        s0 = None if s1 is None else torch.randn(s1.shape, generator=generator, device=self.device)
        return t, x0, s0

    def compute_losses(
        self,
        sample: EditSample,
        generator: torch.Generator | Sequence[torch.Generator],
        t: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`encode` then :meth:`flow_losses`: ``(fm_loss, sem_loss)`` of ``sample``."""
        return self.flow_losses(self.encode(sample), generator, t)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One micro-batch. Randomness (corruption, timesteps, noise) is drawn per sample, from
        a generator seeded by ``(seed, micro-batch index, global slot)``: the micro-batch index
        is the datamodule's ``batch["index"]`` when it sends one (stable under gradient
        accumulation and resume), else ``(global_step, batch_idx)``; sample ``j`` of rank ``r``
        of ``W`` is global slot ``j * W + r``, the slot the datamodule reads it from. So a run
        on ``W`` ranks with micro-batch ``B`` draws exactly what one process with ``W * B``
        draws, and, the loss being a mean over samples, trains the same."""
        task = self._task_of(batch)
        parts = (int(batch["index"]),) if "index" in batch else (self.global_step, batch_idx)
        sample, generators = self.prepare_per_sample(task, batch, parts)
        fm_loss, sem_loss = self.compute_losses(sample, generators)
        loss = fm_loss + self.semantic_weight * sem_loss
        self.task_counts[task.name] += 1
        size = sample.target.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self._log_task_scalars(task.name, fm_loss, sem_loss, batch_idx)
        return loss

    def prepare_per_sample(
        self,
        task: Task,
        batch: Mapping[str, Any],
        parts: Sequence[int],
        rank: int | None = None,
        world_size: int | None = None,
    ) -> tuple[EditSample, list[torch.Generator]]:
        """``task.prepare`` run on each sample of ``batch`` alone, with that sample's generator
        (seeded by ``(seed, *parts, j * world_size + rank)``), and the samples joined; returns
        the sample and the generators, to draw the flow noise from next. ``rank`` and
        ``world_size`` default to the trainer's (0 and 1 without one)."""
        if rank is None:
            rank = self.global_rank
        if world_size is None:
            world_size = int(self._trainer.world_size) if self._trainer is not None else 1
        parts_per_sample = split_batch(batch)
        generators = [
            self._step_generator(*parts, j * world_size + rank)
            for j in range(len(parts_per_sample))
        ]
        samples = [task.prepare(b, g) for b, g in zip(parts_per_sample, generators, strict=True)]
        return EditSample.concat(samples), generators

    def _log_task_scalars(
        self, task: str, fm_loss: Tensor, sem_loss: Tensor, batch_idx: int
    ) -> None:
        """``train/<task>/fm_loss``, ``sem_loss`` and ``count``, straight to the loggers at the
        steps where the task ran (rank zero, every ``log_every_n_steps``). Not ``self.log``:
        Lightning re-sends cached step metrics, so a task that did not run would repeat its last
        value. Under gradient accumulation a task's losses are averaged over its micro-batches
        of the step, logged on the step's last micro-batch."""
        trainer = self._trainer
        if trainer is None or not trainer.loggers:
            return
        self._task_losses.setdefault(task, []).append((fm_loss.detach(), sem_loss.detach()))
        if (batch_idx + 1) % max(int(trainer.accumulate_grad_batches), 1) != 0:
            return
        losses, self._task_losses = self._task_losses, {}
        every = trainer.log_every_n_steps
        if not trainer.is_global_zero or not every or (self.global_step + 1) % every != 0:
            return
        metrics: dict[str, float] = {}
        for name, values in losses.items():
            metrics[f"train/{name}/fm_loss"] = float(torch.stack([v[0] for v in values]).mean())
            metrics[f"train/{name}/sem_loss"] = float(torch.stack([v[1] for v in values]).mean())
            metrics[f"train/{name}/count"] = float(self.task_counts[name])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def _evaluate(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int, stage: str
    ) -> Tensor:
        task = self._task_of(batch)
        generator = self._step_generator(-1, dataloader_idx, batch_idx)
        sample = task.prepare(batch, generator)
        encoded = self.encode(sample)
        size = sample.target.shape[0]
        losses = [
            self.flow_losses(encoded, generator, torch.full((size,), float(value)))
            for value in self.val_timesteps
        ]
        fm_loss = torch.stack([fm for fm, _ in losses]).mean()
        sem_loss = torch.stack([sem for _, sem in losses]).mean()
        loss = fm_loss + self.semantic_weight * sem_loss
        options = {"batch_size": size, "add_dataloader_idx": False, "sync_dist": True}
        self.log(f"{stage}/{task.name}/fm_loss", fm_loss, **options)
        self.log(f"{stage}/{task.name}/sem_loss", sem_loss, **options)
        self.log(f"{stage}/loss", loss, prog_bar=True, **options)
        return loss

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """The batch's task loss averaged over ``val_timesteps`` (``val/<task>/fm_loss``,
        ``val/<task>/sem_loss``, ``val/loss``). The sample is encoded once; corruptions and noise
        come from a generator seeded by ``(seed, dataloader_idx, batch_idx)`` only, so every
        validation run measures the same thing."""
        return self._evaluate(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor | None:
        """Task batches: as :meth:`validation_step`, logged under ``test/``. Any other batch (an
        ``EvalItem`` of a benchmark) is left to the
        :class:`~sama.evaluation.evaluator.Evaluator` callback, which edits and scores it."""
        if not isinstance(batch, Mapping):
            return None
        return self._evaluate(batch, batch_idx, dataloader_idx, "test")

    @torch.no_grad()
    def predict_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any] | None:
        """Generate the batch task's target from its source and instruction (``sama predict``).

        A batch that is not a task batch (an ``EvalItem`` of a benchmark) returns ``None``: the
        :class:`~sama.evaluation.evaluator.Evaluator` callback edits it and writes
        ``output_dir/predictions/<id>.mp4`` (ready for ``sama benchmark score``).

        A task batch is edited by :class:`~sama.pipeline.EditPipeline` (the one sampling path):
        ``task.prepare`` (its randomness from a generator seeded by ``(seed, -2,
        dataloader_idx, batch_idx)``) gives the source and prompts, and
        :meth:`EditPipeline.edit_tensor` samples the target's shape with the module's sampler
        settings (``sample_steps``, ``guidance_scale`` against the negative prompt
        ``"[Video edit]"``, ``sample_shift``) and the noise seed
        ``sama.seeds.stable_seed(seed, dataloader_idx, batch_idx)``. Returns
        ``{"video": (B, 3, T, H, W) in [-1, 1], "instructions": [...], "task": name}``.
        """
        if not isinstance(batch, Mapping):
            return None
        task = self._task_of(batch)
        sample = task.prepare(batch, self._step_generator(-2, dataloader_idx, batch_idx))
        pipeline = EditPipeline.from_module(self, device=self.device)
        settings = pipeline.settings.updated(seed=stable_seed(self.seed, dataloader_idx, batch_idx))
        video = pipeline.edit_tensor(
            sample.source,
            sample.instructions,
            settings,
            output_shape=tuple(sample.target.shape[2:]),
        )
        return {"video": video, "instructions": sample.instructions, "task": task.name}

    def _task_of(self, batch: Mapping[str, Any]) -> Task:
        name = batch.get("task")
        if name not in self.tasks_by_name:
            raise KeyError(
                f"SamaModule: batch task {name!r} is not one of this module's tasks "
                f"{sorted(self.tasks_by_name)}; the datamodule must follow module.task_sampler"
            )
        return self.tasks_by_name[name]

    # ------------------------------------------------------------------------- optim
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        factor = lr_factor_fn(
            self.warmup_steps, self.lr_schedule, self._schedule_steps(), self.min_lr_ratio
        )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _schedule_steps(self) -> int:
        if self.lr_schedule == "constant":
            return 0
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        if max_steps is None or max_steps <= 0:
            raise ValueError(
                "SamaModule: lr_schedule='cosine' needs trainer.max_steps; set it in the config"
            )
        return int(max_steps)

    # ------------------------------------------------------------------------- export
    def export(
        self, directory: str | os.PathLike[str], extra_files: Mapping[str, str] | None = None
    ) -> Path:
        """Write an export of this module into ``directory`` (see :mod:`sama.export`): the
        transformer, ``encoders.json`` (the encoders' class paths + init args and the inference
        description: anchor frames, semantic tokens per frame, prompts, sampler defaults),
        ``extra_files`` and ``SHA256SUMS``; written beside it and renamed into place.

        Rebuild with ``EditPipeline.from_export(directory)`` or ``sama.export.read_export``.
        """
        inference = inference_from_hparams(self.hparams, self.encoders.semantic.tokens_per_frame)
        specs = {key: self.hparams.get(key) for key in ENCODER_KEYS}
        return write_export(
            directory,
            self.model if self.lora_settings is None else LoraExport(self.model),
            self.encoders,
            inference,
            specs=specs,
            extra_files=extra_files,
        )


def _is_spec(value: Any) -> bool:
    """A ``{class_path, init_args}`` mapping or a non-empty list of them (config, not objects)."""
    if isinstance(value, Mapping):
        return "class_path" in value
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(_is_spec(v) for v in value)
    )
