"""On-disk cache of codec latents and text embeddings, and the encoders that read through it.

:class:`CachedCodec` and :class:`CachedTextEncoder` wrap a frozen encoder with the same
interface and look each input up in a :class:`LatentCache` first; the module wraps its codec
and text encoder with them when ``cache_dir`` is set. Only inputs that come back are worth a
place: targets, edit pairs and texts. A source a task draws afresh each step (a random
corruption) is encoded with the plain codec and never stored (``EditSample.source_reusable``).
``datamodules.cache.precompute`` fills a cache from datasets ahead of training.

Layout of a cache folder::

    root/
      index.json                      {"version": 1, "entries": {identity: {key: entry}}}
      shard-<n>-<token>.safetensors   tensors named "<sha1(identity)[:12]>.<key>.<part>"

An entry is ``{"shard": file name, "parts": number of tensors}``. ``identity`` is the
encoder's ``identity`` string, ``key`` the sha1 of the input: for videos the tensor's bytes,
shape and dtype; for texts the UTF-8 text. New entries gather in memory and are written as a
new shard when they pass ``shard_bytes`` or on :meth:`LatentCache.flush`; shards and the
index are written with :func:`sama.files.atomic_write` (a temporary file renamed into place),
and the index is merged under a file lock, so concurrent writers (DDP ranks) and crashes never
leave a half-written file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from sama.encoders import FrozenEncoder, TextEncoder, VideoCodec
from sama.files import atomic_write, atomic_write_text

__all__ = [
    "CachedCodec",
    "CachedTextEncoder",
    "LatentCache",
    "tensor_key",
    "text_key",
]

_INDEX = "index.json"
_VERSION = 1


def tensor_key(tensor: Tensor) -> str:
    """sha1 of a tensor's bytes, shape and dtype (device independent)."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha1(f"{tuple(data.shape)}|{data.dtype}|".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def text_key(text: str) -> str:
    """sha1 of a text's UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class LatentCache:
    """Tensors stored by ``(encoder identity, content key)`` in safetensors shards.

    Args:
        root: cache folder (created when missing).
        shard_bytes: pending entries are written as a shard once they exceed this many bytes.

    Entries put but not yet flushed are served from memory; call :meth:`flush` (or use the
    cache as a context manager) to persist them.
    """

    def __init__(self, root: str | os.PathLike[str], shard_bytes: int = 256 * 2**20) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self._entries: dict[str, dict[str, dict[str, Any]]] = self._read_index()
        self._pending: dict[tuple[str, str], list[Tensor]] = {}
        self._pending_bytes = 0
        self._handles: dict[str, Any] = {}

    def _read_index(self) -> dict[str, dict[str, dict[str, Any]]]:
        index = self.root / _INDEX
        if not index.is_file():
            return {}
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"cache index {index} is not valid JSON ({error.msg}); delete the cache folder"
            ) from error
        if data.get("version") != _VERSION:
            raise ValueError(
                f"cache index {index} has version {data.get('version')}, expected {_VERSION}; "
                "delete the cache folder to rebuild it"
            )
        return data["entries"]

    def __len__(self) -> int:
        stored = sum(len(keys) for keys in self._entries.values())
        return stored + sum(
            key not in self._entries.get(identity, {}) for identity, key in self._pending
        )

    def __contains__(self, item: tuple[str, str]) -> bool:
        identity, key = item
        return item in self._pending or key in self._entries.get(identity, {})

    def get(self, identity: str, key: str) -> list[Tensor] | None:
        """The tensors stored for ``(identity, key)`` (on the CPU), or ``None``."""
        if (identity, key) in self._pending:
            return list(self._pending[(identity, key)])
        entry = self._entries.get(identity, {}).get(key)
        if entry is None:
            return None
        shard = entry["shard"]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / shard), framework="pt", device="cpu")
        name = self._tensor_name(identity, key)
        return [self._handles[shard].get_tensor(f"{name}.{i}") for i in range(entry["parts"])]

    def put(self, identity: str, key: str, tensors: Sequence[Tensor]) -> None:
        """Store ``tensors`` for ``(identity, key)``; writes a shard when enough is pending."""
        if (identity, key) in self:
            return
        stored = [t.detach().cpu().contiguous().clone() for t in tensors]
        self._pending[(identity, key)] = stored
        self._pending_bytes += sum(t.numel() * t.element_size() for t in stored)
        if self._pending_bytes >= self.shard_bytes:
            self.flush()

    @staticmethod
    def _tensor_name(identity: str, key: str) -> str:
        return f"{hashlib.sha1(identity.encode()).hexdigest()[:12]}.{key}"

    def flush(self) -> None:
        """Write pending entries as a new shard and merge them into the index."""
        if not self._pending:
            return
        shard = (
            f"shard-{len(list(self.root.glob('shard-*'))):05d}-{uuid.uuid4().hex[:8]}.safetensors"
        )
        tensors = {
            f"{self._tensor_name(identity, key)}.{i}": tensor
            for (identity, key), parts in self._pending.items()
            for i, tensor in enumerate(parts)
        }
        atomic_write(self.root / shard, lambda path: save_file(tensors, path))
        with open(self.root / ".index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = self._read_index()
                for (identity, key), parts in self._pending.items():
                    entries.setdefault(identity, {})[key] = {"shard": shard, "parts": len(parts)}
                text = json.dumps({"version": _VERSION, "entries": entries}, sort_keys=True)
                atomic_write_text(self.root / _INDEX, text)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._entries = entries
        self._pending.clear()
        self._pending_bytes = 0

    def shards(self) -> list[Path]:
        """Shard files on disk."""
        return sorted(self.root.glob("shard-*.safetensors"))

    def __enter__(self) -> LatentCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


class _CachedEncoder(FrozenEncoder):
    """Shared base: holds the wrapped encoder and the cache; other attributes are the inner's."""

    def __init__(self, inner: nn.Module, cache: LatentCache) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache
        self.identity: str = inner.identity
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def flush(self) -> None:
        """Persist new cache entries (see :meth:`LatentCache.flush`)."""
        self.cache.flush()


class CachedCodec(_CachedEncoder):
    """A :class:`~sama.encoders.VideoCodec` whose ``encode`` goes through a :class:`LatentCache`.

    Each sample of a batch is looked up by :func:`tensor_key` of its ``(3, T, H, W)`` video;
    the misses are encoded together by the wrapped codec and stored. ``decode`` and every
    attribute (``latent_channels``, ``temporal_factor``, ``spatial_factor``, ``identity``)
    are the wrapped codec's. ``hits`` / ``misses`` count samples.
    """

    def __init__(self, codec: VideoCodec, cache: LatentCache) -> None:
        super().__init__(codec, cache)
        self._freeze()

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` in [-1, 1] -> latents ``(B, c, t, h, w)`` (the codec's)."""
        keys = [tensor_key(sample) for sample in video]
        found = [self.cache.get(self.identity, key) for key in keys]
        missing = [i for i, hit in enumerate(found) if hit is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if len(missing) == len(keys):
            latents = self.inner.encode(video)
            for key, latent in zip(keys, latents, strict=True):
                self.cache.put(self.identity, key, [latent])
            return latents
        if missing:
            fresh = self.inner.encode(video[missing])
            for i, latent in zip(missing, fresh, strict=True):
                self.cache.put(self.identity, keys[i], [latent])
                found[i] = [latent]
        return torch.stack([parts[0].to(video.device) for parts in found])

    def decode(self, latents: Tensor) -> Tensor:
        """The wrapped codec's ``decode`` (not cached)."""
        return self.inner.decode(latents)


class CachedTextEncoder(_CachedEncoder):
    """A :class:`~sama.encoders.TextEncoder` whose ``encode`` goes through a :class:`LatentCache`.

    Each text is looked up by :func:`text_key`; the misses (deduplicated) are encoded together
    by the wrapped encoder and their ``(states (L, D), mask (L,))`` rows stored. ``dim`` and
    ``identity`` are the wrapped encoder's. ``hits`` / ``misses`` count texts.
    """

    def __init__(self, text_encoder: TextEncoder, cache: LatentCache) -> None:
        super().__init__(text_encoder, cache)
        self._freeze()

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """``texts`` -> ``(states (B, L, dim) float, mask (B, L) bool)`` (the encoder's)."""
        if isinstance(texts, str) or not texts:
            raise ValueError("CachedTextEncoder.encode: pass a non-empty list of strings")
        rows = {text: self.cache.get(self.identity, text_key(text)) for text in texts}
        missing = [text for text, row in rows.items() if row is None]
        self.misses += sum(text in missing for text in texts)
        self.hits += sum(text not in missing for text in texts)
        if missing:
            states, mask = self.inner.encode(missing)
            for text, row_states, row_mask in zip(missing, states, mask, strict=True):
                self.cache.put(self.identity, text_key(text), [row_states, row_mask])
                rows[text] = [row_states, row_mask]
        device = getattr(self.inner, "device", torch.device("cpu"))
        states = torch.stack([rows[text][0].to(device) for text in texts])
        mask = torch.stack([rows[text][1].to(device) for text in texts])
        return states, mask
