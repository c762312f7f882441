"""SamaTransformer: SAMA's in-context video DiT, composed on diffusers' Wan transformer.

The model owns a ``diffusers.WanTransformer3DModel`` (``self.wan``) and reuses its patch
embedding, condition embedder, RoPE, blocks, output norm and projection; only the forward is
re-composed so that one sequence carries three kinds of tokens::

    [ source tokens | semantic tokens | target tokens ]
      type 0          type 1            type 2           (learned segment_embedding, zero-init)
      RoPE of its     no rotation       RoPE of its
      own grid        (cos=1, sin=0)    own grid         (source and target both start at 0)

Only the target positions are un-patchified into the velocity; the semantic positions are read
by ``semantic_head`` to predict the semantic-token velocity. See ``docs/model.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sama.files import atomic_write, atomic_write_text

SAMA_CONFIG_NAME = "sama_config.json"
SAMA_WEIGHTS_NAME = "model.safetensors"
_FORMAT = "sama-transformer"
_FORMAT_VERSION = 1

SOURCE_TYPE, SEMANTIC_TYPE, TARGET_TYPE = 0, 1, 2


class SamaOutput(NamedTuple):
    """Output of :class:`SamaTransformer`.

    velocity: ``(B, C_out, T, H, W)``, same shape as the target latents; the flow velocity
        ``x1 - x0`` in the convention of ``sama.flow``.
    semantic: ``(B, N, D_sem)`` predicted semantic-token velocity, or ``None`` when no semantic
        tokens were given.
    """

    velocity: Tensor
    semantic: Tensor | None


class SemanticProjector(nn.Module):
    """``LayerNorm(D_sem) -> Linear(D_sem, hidden) -> GELU -> Linear(hidden, dim)``.

    Attribute names (``norm``, ``fc1``, ``fc2``) match the released ``siglip_feat_mlp`` keys.
    """

    def __init__(self, semantic_dim: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(semantic_dim)
        self.fc1 = nn.Linear(semantic_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, N, D_sem) -> (B, N, dim)``."""
        return self.fc2(self.act(self.fc1(self.norm(tokens))))


class SemanticHead(nn.Module):
    """``LayerNorm(dim) -> Linear(dim, D_sem)``; names match the released ``semantic_head``."""

    def __init__(self, dim: int, semantic_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, semantic_dim)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(B, N, dim) -> (B, N, D_sem)``."""
        return self.proj(self.norm(hidden))


def tiny_wan_config(
    *,
    in_channels: int = 16,
    out_channels: int | None = None,
    text_dim: int = 32,
    dim: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    patch_size: tuple[int, int, int] | list[int] = (1, 2, 2),
    ffn_dim: int = 128,
    freq_dim: int = 32,
    rope_max_seq_len: int = 64,
) -> dict[str, Any]:
    """A small, valid ``WanTransformer3DModel`` config (kwargs dict) for tests and tiny runs.

    ``dim`` is the transformer width (``num_heads * attention_head_dim``). Wan's RoPE splits each
    head into (frame, height, width) parts of ``hd - 4*(hd//6)``, ``2*(hd//6)``, ``2*(hd//6)``
    channels, so the head size must be even and at least 6.
    """
    if dim % num_heads:
        raise ValueError(f"tiny_wan_config: dim={dim} is not divisible by num_heads={num_heads}")
    head_dim = dim // num_heads
    if head_dim % 2 or head_dim < 6:
        raise ValueError(
            f"tiny_wan_config: head size dim/num_heads={head_dim} must be even and >= 6 "
            "for Wan's 3-axis RoPE split"
        )
    if len(patch_size) != 3:
        raise ValueError(
            f"tiny_wan_config: patch_size must have 3 entries (t, h, w), got {patch_size}"
        )
    return {
        "patch_size": [int(p) for p in patch_size],
        "num_attention_heads": num_heads,
        "attention_head_dim": head_dim,
        "in_channels": in_channels,
        "out_channels": out_channels if out_channels is not None else in_channels,
        "text_dim": text_dim,
        "freq_dim": freq_dim,
        "ffn_dim": ffn_dim,
        "num_layers": num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": rope_max_seq_len,
    }


def _public_config(wan: WanTransformer3DModel) -> dict[str, Any]:
    """The Wan constructor kwargs as plain JSON-able values (diffusers' private keys dropped)."""
    config = {k: v for k, v in dict(wan.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(config))


class SamaTransformer(nn.Module):
    """SAMA's in-context DiT on top of a diffusers ``WanTransformer3DModel``.

    Args:
        wan_config: kwargs for ``WanTransformer3DModel`` (see :func:`tiny_wan_config`).
        semantic_dim: width ``D_sem`` of the semantic encoder's tokens (1152 for SigLIP so400m).
        semantic_hidden: hidden width of the semantic projector MLP (1024 in the paper).
        attention_backend: optional diffusers attention backend name (e.g. ``"native"``,
            ``"flash"``); ``None`` keeps diffusers' default (torch SDPA).

    Prior preservation: the segment (type) embedding is zero-initialised and type 2 is always
    added to the target tokens, so with no source and no semantic tokens a fresh model computes
    exactly ``self.wan(...)``. Once the embedding is trained the target tokens carry type 2 in
    every mode, pure generation included.
    """

    def __init__(
        self,
        wan_config: Mapping[str, Any],
        *,
        semantic_dim: int,
        semantic_hidden: int = 1024,
        attention_backend: str | None = None,
    ) -> None:
        super().__init__()
        self._assemble(
            WanTransformer3DModel(**dict(wan_config)),
            semantic_dim=semantic_dim,
            semantic_hidden=semantic_hidden,
            attention_backend=attention_backend,
        )

    def _assemble(
        self,
        wan: WanTransformer3DModel,
        *,
        semantic_dim: int,
        semantic_hidden: int,
        attention_backend: str | None,
    ) -> None:
        config = wan.config
        if config.image_dim is not None or config.added_kv_proj_dim is not None:
            raise ValueError(
                "SamaTransformer: image-conditioned Wan variants (image_dim / added_kv_proj_dim set) "
                "are not supported; use a text-to-video Wan config"
            )
        head_dim = config.attention_head_dim
        if wan.rope.freqs_cos.shape[1] != head_dim:
            raise ValueError(
                f"SamaTransformer: attention_head_dim={head_dim} does not fit Wan's RoPE split; "
                "use an even head size >= 6"
            )
        self.wan = wan
        self.semantic_dim = int(semantic_dim)
        self.semantic_hidden = int(semantic_hidden)
        self.dim = config.num_attention_heads * head_dim
        self.gradient_checkpointing = False

        param = next(wan.parameters())
        factory = {"device": param.device, "dtype": param.dtype}
        self.segment_embedding = nn.Embedding(3, self.dim, **factory)
        nn.init.zeros_(self.segment_embedding.weight)
        self.siglip_feat_mlp = SemanticProjector(self.semantic_dim, self.semantic_hidden, self.dim)
        self.semantic_head = SemanticHead(self.dim, self.semantic_dim)
        self.siglip_feat_mlp.to(**factory)
        self.semantic_head.to(**factory)
        if attention_backend is not None:
            self.set_attention_backend(attention_backend)

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_wan(
        cls,
        wan: WanTransformer3DModel,
        *,
        semantic_dim: int,
        semantic_hidden: int = 1024,
        attention_backend: str | None = None,
    ) -> SamaTransformer:
        """Wrap an existing (e.g. pretrained) Wan transformer; new modules are freshly initialised."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model._assemble(
            wan,
            semantic_dim=semantic_dim,
            semantic_hidden=semantic_hidden,
            attention_backend=attention_backend,
        )
        return model

    @property
    def wan_config(self) -> dict[str, Any]:
        """The ``WanTransformer3DModel`` kwargs of the owned backbone (JSON-able)."""
        return _public_config(self.wan)

    @classmethod
    def from_pretrained(
        cls,
        local_dir: str | os.PathLike[str],
        *,
        semantic_dim: int | None = None,
        semantic_hidden: int = 1024,
        attention_backend: str | None = None,
    ) -> SamaTransformer:
        """Load from a local directory (no downloads).

        Two layouts are recognised:

        * a directory written by :meth:`save_pretrained` (``sama_config.json`` +
          ``model.safetensors``): everything, semantic sizes included, comes from the files;
        * a diffusers-format Wan transformer (``config.json`` + safetensors, either directly in
          ``local_dir`` or in its ``transformer/`` subfolder, as in a full Wan pipeline repo):
          the backbone is loaded and the SAMA modules are freshly initialised, so
          ``semantic_dim`` is required.
        """
        path = Path(local_dir)
        if not path.is_dir():
            raise FileNotFoundError(
                f"SamaTransformer.from_pretrained: {path} is not an existing local directory; "
                "download the weights first and pass their folder"
            )
        if (path / SAMA_CONFIG_NAME).is_file():
            return cls._load_sama_dir(path, semantic_dim, attention_backend)
        for wan_dir in (path, path / "transformer"):
            if _is_diffusers_wan_dir(wan_dir):
                if semantic_dim is None:
                    raise ValueError(
                        f"SamaTransformer.from_pretrained: {wan_dir} holds a plain Wan transformer; "
                        "pass semantic_dim= (the semantic encoder's width) to add the SAMA modules"
                    )
                wan = WanTransformer3DModel.from_pretrained(wan_dir, local_files_only=True)
                return cls.from_wan(
                    wan,
                    semantic_dim=semantic_dim,
                    semantic_hidden=semantic_hidden,
                    attention_backend=attention_backend,
                )
        raise FileNotFoundError(
            f"SamaTransformer.from_pretrained: {path} has neither {SAMA_CONFIG_NAME} (a SAMA save) "
            "nor a WanTransformer3DModel config.json (in it or in transformer/)"
        )

    @classmethod
    def _load_sama_dir(
        cls, path: Path, semantic_dim: int | None, attention_backend: str | None
    ) -> SamaTransformer:
        from accelerate import init_empty_weights

        meta = json.loads((path / SAMA_CONFIG_NAME).read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path / SAMA_CONFIG_NAME}: field 'format' is not {_FORMAT!r}")
        if semantic_dim is not None and semantic_dim != meta["semantic_dim"]:
            raise ValueError(
                f"{path / SAMA_CONFIG_NAME}: semantic_dim is {meta['semantic_dim']}, "
                f"but semantic_dim={semantic_dim} was requested"
            )
        weights = path / meta["weights"]
        if not weights.is_file() or weights.stat().st_size != meta["weights_bytes"]:
            raise ValueError(
                f"{weights}: missing or not the file {SAMA_CONFIG_NAME} describes "
                "(interrupted save?); save the model again"
            )
        # Parameters are created on the meta device and replaced by the loaded tensors; buffers
        # (Wan's RoPE tables) are computed normally.
        with init_empty_weights(include_buffers=False):
            model = cls(
                meta["wan_config"],
                semantic_dim=meta["semantic_dim"],
                semantic_hidden=meta["semantic_hidden"],
            )
        model.load_state_dict(load_file(weights), strict=True, assign=True)
        if attention_backend is not None:
            model.set_attention_backend(attention_backend)
        return model

    def save_pretrained(self, local_dir: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` + ``sama_config.json`` into ``local_dir``.

        Each file is written to a temporary name and moved into place (``os.replace``); the
        weights go first and the config, which records the weights' byte size, last, so a reader
        never loads a half-written file and a torn pair is detected on load.
        """
        path = Path(local_dir)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        weights = path / SAMA_WEIGHTS_NAME
        atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "wan_config": self.wan_config,
            "semantic_dim": self.semantic_dim,
            "semantic_hidden": self.semantic_hidden,
            "weights": SAMA_WEIGHTS_NAME,
            "weights_bytes": weights.stat().st_size,
        }
        text = json.dumps(meta, indent=2) + "\n"
        atomic_write_text(path / SAMA_CONFIG_NAME, text)
        return path

    # ------------------------------------------------------------------------ switches
    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer block in backward (``torch.utils.checkpoint``)."""
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    def set_attention_backend(self, backend: str) -> None:
        """Select a diffusers attention backend by name (``diffusers.attention_dispatch``)."""
        self.wan.set_attention_backend(backend)

    # ----------------------------------------------------------------------------- pieces
    def _grid(self, latents: Tensor, name: str) -> tuple[int, int, int]:
        """Token grid ``(f, h, w)`` of ``(B, C, T, H, W)`` latents, with shape checks."""
        if latents.ndim != 5:
            raise ValueError(
                f"SamaTransformer: {name} must be (B, C, T, H, W), got {tuple(latents.shape)}"
            )
        in_channels = self.wan.config.in_channels
        if latents.shape[1] != in_channels:
            raise ValueError(
                f"SamaTransformer: {name} has {latents.shape[1]} channels, the model expects "
                f"in_channels={in_channels}"
            )
        patch = self.wan.config.patch_size
        sizes = latents.shape[2:]
        if any(s % p for s, p in zip(sizes, patch, strict=True)):
            raise ValueError(
                f"SamaTransformer: {name} size (T, H, W)={tuple(sizes)} is not divisible by "
                f"patch_size={tuple(patch)}"
            )
        f, h, w = (s // p for s, p in zip(sizes, patch, strict=True))
        grid = (f, h, w)
        if max(grid) > self.wan.config.rope_max_seq_len:
            raise ValueError(
                f"SamaTransformer: {name} token grid {grid} exceeds rope_max_seq_len="
                f"{self.wan.config.rope_max_seq_len}; raise it in the Wan config"
            )
        return grid

    def _patchify(self, latents: Tensor) -> Tensor:
        """``(B, C, T, H, W) -> (B, f*h*w, dim)`` through Wan's patch embedding."""
        tokens = self.wan.patch_embedding(latents.to(self.wan.patch_embedding.weight.dtype))
        return tokens.flatten(2).transpose(1, 2).contiguous()

    def rotary_embeddings(
        self,
        target_latents: Tensor,
        *,
        source_latents: Tensor | None = None,
        num_semantic: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """Rotary tables ``(cos, sin)``, each ``(1, S, 1, head_dim)``, for the full sequence.

        Source and target positions come from Wan's RoPE on their own latent grids (frame,
        height and width indices all start at 0, so equal grids give equal rotations); the
        ``num_semantic`` semantic positions get the identity rotation (cos = 1, sin = 0).
        """
        self._grid(target_latents, "target_latents")
        target_cos, target_sin = self.wan.rope(target_latents)
        cos_parts, sin_parts = [], []
        if source_latents is not None:
            self._grid(source_latents, "source_latents")
            source_cos, source_sin = self.wan.rope(source_latents)
            cos_parts.append(source_cos)
            sin_parts.append(source_sin)
        if num_semantic:
            shape = (1, num_semantic, 1, target_cos.shape[-1])
            cos_parts.append(target_cos.new_ones(shape))
            sin_parts.append(target_sin.new_zeros(shape))
        cos_parts.append(target_cos)
        sin_parts.append(target_sin)
        return torch.cat(cos_parts, dim=1), torch.cat(sin_parts, dim=1)

    def _typed(self, tokens: Tensor, kind: int) -> Tensor:
        return tokens + self.segment_embedding.weight[kind].to(tokens.dtype)

    def _run_blocks(
        self, hidden: Tensor, text: Tensor, timestep_proj: Tensor, rotary: tuple[Tensor, Tensor]
    ) -> Tensor:
        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.wan.blocks:
            if use_checkpoint:
                hidden = checkpoint(block, hidden, text, timestep_proj, rotary, use_reentrant=False)
            else:
                hidden = block(hidden, text, timestep_proj, rotary)
        return hidden

    def _unpatchify(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """``(B, f*h*w, C_out * p_t*p_h*p_w) -> (B, C_out, f*p_t, h*p_h, w*p_w)``."""
        p_t, p_h, p_w = self.wan.config.patch_size
        f, h, w = grid
        out = tokens.reshape(tokens.shape[0], f, h, w, p_t, p_h, p_w, -1)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        target_latents: Tensor,
        timestep: Tensor,
        text_states: Tensor,
        *,
        source_latents: Tensor | None = None,
        semantic_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> SamaOutput:
        """Predict the flow velocity of the target latents (and of the semantic tokens).

        Args:
            target_latents: noisy target ``(B, C, T, H, W)``.
            timestep: ``(B,)`` (or a scalar) in Wan's scale, ``1000 * (1 - t)`` with ``t`` the
                flow time of ``sama.flow`` (1000 = pure noise, 0 = clean). One timestep drives
                the AdaLN modulation of every token, the clean source included.
            text_states: ``(B, L, D_text)`` text-encoder states.
            source_latents: clean source ``(B, C, T_src, H_src, W_src)``; its frame count may
                differ from the target's (1-frame images, speed perturbation).
            semantic_tokens: noisy semantic tokens ``(B, N, D_sem)`` in the semantic encoder's
                space.
            text_mask: ``(B, L)`` bool, True = real token; other positions are zeroed before the
                condition embedder, as the Wan pipeline pads prompts with zeros.

        Returns:
            :class:`SamaOutput` with ``velocity`` shaped like ``target_latents`` and
            ``semantic`` ``(B, N, D_sem)`` or ``None``.
        """
        wan = self.wan
        batch = target_latents.shape[0]
        target_grid = self._grid(target_latents, "target_latents")
        for name, other in (
            ("source_latents", source_latents),
            ("semantic_tokens", semantic_tokens),
        ):
            if other is not None and other.shape[0] != batch:
                raise ValueError(
                    f"SamaTransformer: {name} batch {other.shape[0]} != target batch {batch}"
                )
        if semantic_tokens is not None and (
            semantic_tokens.ndim != 3 or semantic_tokens.shape[-1] != self.semantic_dim
        ):
            raise ValueError(
                f"SamaTransformer: semantic_tokens must be (B, N, {self.semantic_dim}), "
                f"got {tuple(semantic_tokens.shape)}"
            )

        num_semantic = 0 if semantic_tokens is None else semantic_tokens.shape[1]
        rotary = self.rotary_embeddings(
            target_latents, source_latents=source_latents, num_semantic=num_semantic
        )
        pieces = []
        if source_latents is not None:
            pieces.append(self._typed(self._patchify(source_latents), SOURCE_TYPE))
        target_tokens = self._typed(self._patchify(target_latents), TARGET_TYPE)
        if semantic_tokens is not None:
            projected = self.siglip_feat_mlp(
                semantic_tokens.to(self.segment_embedding.weight.dtype)
            )
            pieces.append(self._typed(projected.to(target_tokens.dtype), SEMANTIC_TYPE))
        pieces.append(target_tokens)
        hidden = torch.cat(pieces, dim=1)
        num_target = target_tokens.shape[1]
        num_source = hidden.shape[1] - num_target - num_semantic

        timestep = self._check_timestep(timestep, batch)
        text_states = self._check_text(text_states, text_mask, batch)
        text_states = text_states.to(wan.condition_embedder.text_embedder.linear_1.weight.dtype)
        temb, timestep_proj, text, _ = wan.condition_embedder(timestep, text_states, None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))  # (B, 6, dim)

        hidden = self._run_blocks(hidden, text, timestep_proj, rotary)

        semantic = None
        if semantic_tokens is not None:
            semantic = self.semantic_head(hidden[:, num_source : num_source + num_semantic])

        shift, scale = (wan.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        target_hidden = hidden[:, -num_target:]
        target_hidden = (wan.norm_out(target_hidden.float()) * (1 + scale) + shift).type_as(hidden)
        velocity = self._unpatchify(wan.proj_out(target_hidden), target_grid)
        return SamaOutput(velocity=velocity, semantic=semantic)

    @staticmethod
    def _check_timestep(timestep: Tensor, batch: int) -> Tensor:
        timestep = torch.as_tensor(timestep)
        if timestep.ndim == 0:
            return timestep.expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(
                f"SamaTransformer: timestep must be (B,)=({batch},) in Wan's 0..1000 scale, got "
                f"{tuple(timestep.shape)}; per-token timesteps are not supported"
            )
        return timestep

    @staticmethod
    def _check_text(text_states: Tensor, text_mask: Tensor | None, batch: int) -> Tensor:
        if text_states.ndim != 3 or text_states.shape[0] != batch:
            raise ValueError(
                f"SamaTransformer: text_states must be (B={batch}, L, D_text), got "
                f"{tuple(text_states.shape)}"
            )
        if text_mask is None:
            return text_states
        if text_mask.shape != text_states.shape[:2]:
            raise ValueError(
                f"SamaTransformer: text_mask must be (B, L)={tuple(text_states.shape[:2])}, got "
                f"{tuple(text_mask.shape)}"
            )
        return text_states * text_mask.unsqueeze(-1).to(text_states.dtype)


def _is_diffusers_wan_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "WanTransformer3DModel"
    except json.JSONDecodeError:
        return False
