"""Fill a latent cache from datasets ahead of training: :func:`precompute`.

The cache itself (``LatentCache``, the ``CachedCodec`` / ``CachedTextEncoder`` wrappers and the
key functions) lives in :mod:`sama.latent_cache`, beside the encoders it wraps; this module
walks the datamodule's datasets through it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from datamodules.streams import READ_ERRORS
from sama.encoders import TextEncoder, VideoCodec
from sama.latent_cache import CachedCodec, CachedTextEncoder, LatentCache

__all__ = ["precompute"]

_VIDEO_KEYS = ("video", "source", "target")
_TEXT_KEYS = ("caption", "instruction")


def precompute(
    datasets: Iterable[Dataset],
    codec: VideoCodec,
    text_encoder: TextEncoder | None,
    root: str | os.PathLike[str],
    *,
    shard_bytes: int = 256 * 2**20,
) -> dict[str, int]:
    """Encode every item of ``datasets`` into the cache at ``root``, with a progress bar.

    Videos (``video``, ``source``, ``target``) go through ``codec``, texts (``caption``,
    ``instruction``, non-empty) through ``text_encoder`` (skipped when ``None``). Items that
    fail to read are skipped and counted. Training then hits the cache exactly when it sees
    the same tensors, i.e. for datasets whose items are deterministic (ours are: item ``i`` is
    a pure function of ``(seed, i)``): every target, every pair source and every text. A
    source a task corrupts at random each step is never looked up nor stored.

    Returns:
        ``{"items", "skipped", "videos", "texts"}`` counts; ``videos`` / ``texts`` are the
        entries newly computed.
    """
    cache = LatentCache(root, shard_bytes=shard_bytes)
    cached_codec = CachedCodec(codec, cache)
    cached_text = CachedTextEncoder(text_encoder, cache) if text_encoder is not None else None
    counts = {"items": 0, "skipped": 0}
    datasets = list(datasets)
    total = sum(len(dataset) for dataset in datasets)
    with cache, tqdm(total=total, desc="precompute", unit="item") as progress:
        for dataset in datasets:
            for index in range(len(dataset)):
                progress.update(1)
                try:
                    item = dataset[index]
                except READ_ERRORS:
                    counts["skipped"] += 1
                    continue
                counts["items"] += 1
                for key in _VIDEO_KEYS:
                    if isinstance(item.get(key), Tensor):
                        device = getattr(codec, "device", torch.device("cpu"))
                        cached_codec.encode(item[key][None].to(device))
                texts = [item[key] for key in _TEXT_KEYS if item.get(key)]
                if cached_text is not None and texts:
                    cached_text.encode(texts)
    counts["videos"] = cached_codec.misses
    counts["texts"] = cached_text.misses if cached_text is not None else 0
    return counts
