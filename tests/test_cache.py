"""LatentCache and the cached encoder wrappers: storage, sharding, exact loss equivalence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from helpers_data import SmoothClips, clip_batch, tiny_model_config

import datamodules
from datamodules import SamaDataModule, precompute
from datamodules.clips import VideoClips
from sama import latent_cache
from sama.encoders import PixelCodec, RandomTextEncoder
from sama.flow import add_noise, masked_mse, velocity_target
from sama.io import write_video
from sama.latent_cache import CachedCodec, CachedTextEncoder, LatentCache, tensor_key
from sama.module import SamaModule
from tasks import CubeInpainting, EditSample, InstructionEditing, SpeedPerturbation


def _count_calls(encoder) -> list[int]:
    calls = [0]
    raw = encoder.encode

    def counted(*args, **kwargs):
        calls[0] += 1
        return raw(*args, **kwargs)

    encoder.encode = counted
    return calls


def test_put_get_persist_and_rotate_shards(tmp_path: Path) -> None:
    cache = LatentCache(tmp_path, shard_bytes=1000)
    tensors = [torch.randn(8, 8) for _ in range(6)]  # 256 bytes each
    for i, tensor in enumerate(tensors):
        cache.put("enc:a", f"k{i}", [tensor, tensor > 0])
    assert torch.equal(cache.get("enc:a", "k5")[0], tensors[5])  # pending, served from memory
    cache.flush()
    assert len(cache.shards()) >= 2
    assert not list(tmp_path.glob(".*.tmp"))
    reopened = LatentCache(tmp_path)
    assert len(reopened) == 6
    for i, tensor in enumerate(tensors):
        value, sign = reopened.get("enc:a", f"k{i}")
        assert torch.equal(value, tensor) and torch.equal(sign, tensor > 0)
    assert reopened.get("enc:b", "k0") is None  # keyed by encoder identity too


def test_tensor_key_covers_bytes_shape_and_dtype() -> None:
    x = torch.arange(6.0)
    assert tensor_key(x) == tensor_key(x.clone())
    assert (
        len({tensor_key(x), tensor_key(x.reshape(2, 3)), tensor_key(x.double()), tensor_key(x + 1)})
        == 4
    )


def _losses(
    codec, text, videos: list[torch.Tensor], captions: list[list[str]]
) -> list[torch.Tensor]:
    """A flow-matching loss per batch, with a fixed random "model" conditioned on the text."""
    generator = torch.Generator().manual_seed(0)
    losses = []
    for video, texts in zip(videos, captions, strict=True):
        latents = codec.encode(video)
        states, mask = text.encode(texts)
        context = (states * mask[..., None]).sum(1).mean(1)  # (B,)
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.rand(latents.shape[0], generator=generator)
        x_t = add_noise(latents, noise, t)
        prediction = 0.5 * x_t + context.reshape(-1, 1, 1, 1, 1)
        losses.append(masked_mse(prediction, velocity_target(latents, noise)))
    return losses


def test_cached_losses_equal_raw_losses_and_skip_the_encoders(tmp_path: Path) -> None:
    videos = [torch.rand(2, 3, 5, 8, 8) * 2 - 1 for _ in range(3)]
    captions = [["a cat", "a dog"], ["a cat", "snow"], ["rain", "a dog"]]
    codec, text = PixelCodec(spatial_factor=4), RandomTextEncoder(dim=16, max_length=8)
    raw = _losses(codec, text, videos, captions)

    cached_codec = CachedCodec(codec, LatentCache(tmp_path))
    cached_text = CachedTextEncoder(text, cached_codec.cache)
    assert cached_codec.latent_channels == codec.latent_channels
    assert cached_codec.identity == codec.identity and cached_text.dim == text.dim
    first = _losses(cached_codec, cached_text, videos, captions)
    cached_codec.flush()

    codec_calls, text_calls = _count_calls(codec), _count_calls(text)
    cache = LatentCache(tmp_path)
    second = _losses(CachedCodec(codec, cache), CachedTextEncoder(text, cache), videos, captions)
    assert codec_calls == [0] and text_calls == [0]
    for a, b, c in zip(raw, first, second, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert cached_text.hits == 2 and cached_text.misses == 4  # "a cat", "a dog" seen twice

    codec2 = PixelCodec(spatial_factor=2)  # another identity: nothing cached for it
    calls = _count_calls(codec2)
    CachedCodec(codec2, cache).encode(videos[0])
    assert calls == [1]


def test_precompute_fills_the_cache_training_then_hits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        write_video(
            tmp_path / "clips" / f"v{i}.mp4",
            rng.integers(0, 255, (9, 16, 16, 3), dtype=np.uint8),
            fps=10,
        )
    (tmp_path / "clips" / "v0.txt").write_text("noise")
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"junk")
    clips = VideoClips([str(tmp_path / "clips")], frames=5, size=(8, 8), clips_per_video=2)
    codec, text = PixelCodec(spatial_factor=4), RandomTextEncoder(dim=8, max_length=4)
    counts = precompute([clips], codec, text, tmp_path / "cache")
    assert counts == {"items": 4, "skipped": 2, "videos": 4, "texts": 1}
    calls = _count_calls(codec)
    cached = CachedCodec(codec, LatentCache(tmp_path / "cache"))
    video = torch.stack([clips[i]["video"] for i in (2, 3, 5)])
    assert torch.equal(cached.encode(video), codec.encode(video))
    assert calls == [1] and cached.hits == 3  # only the direct call reached the codec


def test_datamodules_keeps_re_exporting_the_cache() -> None:
    for name in ("LatentCache", "CachedCodec", "CachedTextEncoder", "tensor_key", "text_key"):
        assert getattr(datamodules, name) is getattr(latent_cache, name)


def _train(root: Path, cache_dir: Path | None, steps: int = 5) -> tuple[list[float], SamaModule]:
    """``steps`` fit steps of cube inpainting on 2 clips (both in every batch): the losses."""
    torch.manual_seed(0)
    config = tiny_model_config(
        tasks=[{"class_path": "tasks.CubeInpainting"}],
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    module = SamaModule.from_config(config)
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
        ) -> None:
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Losses()],
    )
    data = SamaDataModule(clips=[SmoothClips(2, 5, (16, 16))], batch_size=2)
    trainer.fit(module, datamodule=data)
    return losses, module


def test_cube_inpainting_training_caches_the_targets_only_and_keeps_the_losses(
    tmp_path: Path,
) -> None:
    plain, _ = _train(tmp_path / "plain", None)
    cached, module = _train(tmp_path / "cached", tmp_path / "cache")
    assert len(plain) == 5 and cached == plain
    codec = module.encoders.codec
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    # 2 clips = 2 targets; the 10 corrupted sources (5 steps x 2 clips) are never stored
    assert len(index["entries"][codec.identity]) == 2
    clips = SmoothClips(2, 5, (16, 16))
    stored = {tensor_key(clips[i]["video"]) for i in range(2)}
    assert set(index["entries"][codec.identity]) == stored


def _encode_counts(module: SamaModule, sample: EditSample) -> tuple[int, int]:
    """Codec calls of one ``encode(sample)`` and the cache's codec entries after it."""
    cached = module._compute_encoders.value.codec
    calls = _count_calls(module.encoders.codec)
    module.encode(sample)
    return calls[0], sum(key[0] == cached.identity for key in module._latent_cache._pending)


def test_encode_caches_a_source_exactly_when_it_is_reusable(tmp_path: Path) -> None:
    module = SamaModule.from_config(tiny_model_config(cache_dir=str(tmp_path / "cache")))
    generator = torch.Generator().manual_seed(0)
    clips = clip_batch(2, 5, (16, 16))
    corrupted = CubeInpainting().prepare(clips, generator)
    assert not corrupted.source_reusable
    assert _encode_counts(module, corrupted) == (2, 2)  # target (cached), source (plain codec)
    assert _encode_counts(module, corrupted) == (1, 2)  # target hit; source encoded afresh
    sped_up = SpeedPerturbation().prepare(clips, generator)  # deterministic: reusable
    assert sped_up.source_reusable
    assert _encode_counts(module, sped_up) == (1, 4)  # target hit; source stored
    pairs = {
        "source": torch.rand(2, 3, 5, 16, 16) * 2 - 1,
        "target": torch.rand(2, 3, 5, 16, 16) * 2 - 1,
        "instruction": ["add a hat", "remove the cat"],
    }
    pair = InstructionEditing().prepare(pairs, generator)
    assert pair.source_reusable
    assert _encode_counts(module, pair) == (2, 8)
    assert _encode_counts(module, pair) == (0, 8)  # both read back
