"""Edit metrics against hand-computed values on tiny tensors."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sama.evaluation.metrics import (
    PSNR_CAP_DB,
    ClipFrameConsistency,
    ClipTextAlignment,
    DinoFrameConsistency,
    EditPSNR,
    EditRegionPSNR,
    EditSSIM,
    MotionFidelity,
    PreservationPSNR,
    TemporalConsistency,
    build_metrics,
    metric_directions,
)


def textured(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth random texture in [-0.8, 0.8], float32 (H, W): good for optical flow."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.standard_normal((1, 1, h, w)).astype(np.float32))
    kernel = torch.ones(1, 1, 5, 5) / 25.0
    wrapped = torch.nn.functional.pad(noise, (2, 2, 2, 2), mode="circular")
    smooth = torch.nn.functional.conv2d(wrapped, kernel)[0, 0]
    smooth = smooth / smooth.abs().max() * 0.8
    return smooth.numpy()


def translating_video(shift_per_frame: int, frames: int = 4) -> torch.Tensor:
    """(1, 3, T, 64, 64): a texture moving right by ``shift_per_frame`` pixels each frame."""
    base = textured()
    planes = [np.roll(base, shift_per_frame * t, axis=1) for t in range(frames)]
    video = torch.from_numpy(np.stack(planes))  # (T, H, W)
    return torch.stack([video, 0.5 * video, -video])[None]


def recolor_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """source, target (a square recoloured), mask (1 inside the square); all (1, C, 2, 32, 32)."""
    plane = torch.from_numpy(textured(32, 32))
    source = torch.stack([plane, plane, plane])[None, :, None].repeat(1, 1, 2, 1, 1)
    target = source.clone()
    target[:, 0, :, 8:24, 8:24] = 0.9
    target[:, 1:, :, 8:24, 8:24] = -0.9
    mask = torch.zeros(1, 1, 2, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    return source, target, mask


def test_psnr_of_a_constant_error_is_exact() -> None:
    target = torch.rand(2, 3, 2, 16, 16) - 0.5  # in [-0.5, 0.5]
    edit = target + 0.2  # 0.1 on [0, 1] data -> MSE 0.01 -> 20 dB
    metric = EditPSNR()
    torch.testing.assert_close(metric.score(edit, target=target), torch.full((2,), 20.0).double())
    metric.update(edit, target=target)
    assert metric.compute().item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_is_the_mean_of_per_sample_psnr_and_capped_at_zero_mse() -> None:
    target = torch.zeros(3, 3, 1, 8, 8)
    edit = target.clone()
    edit[0] += 0.2  # 20 dB
    edit[1] += 0.02  # 40 dB
    scores = EditPSNR().score(edit, target=target)
    assert scores.tolist() == pytest.approx([20.0, 40.0, PSNR_CAP_DB], abs=1e-4)
    metric = EditPSNR()
    metric.update(edit, target=target)
    assert metric.compute().item() == pytest.approx((20.0 + 40.0 + PSNR_CAP_DB) / 3, abs=1e-4)


def test_masked_psnr_counts_only_its_region() -> None:
    source = torch.zeros(1, 3, 2, 8, 8)
    mask = torch.zeros(1, 1, 2, 8, 8)
    mask[..., :4, :] = 1.0
    edit = source.clone()
    edit[..., :4, :] += 0.2  # changed inside the mask only: 20 dB there
    target = source.clone()
    region = EditRegionPSNR().score(edit, target=target, mask=mask)
    preservation = PreservationPSNR().score(edit, source=source, mask=mask)
    assert region.item() == pytest.approx(20.0, abs=1e-4)
    assert preservation.item() == PSNR_CAP_DB
    edit_outside = source.clone()
    edit_outside[..., 4:, :] += 0.02
    assert PreservationPSNR().score(edit_outside, source=source, mask=mask).item() == (
        pytest.approx(40.0, abs=1e-4)
    )


def test_empty_regions_are_excluded_and_counted() -> None:
    source = torch.zeros(3, 3, 1, 8, 8)
    edit = source + 0.2
    mask = torch.zeros(3, 1, 1, 8, 8)
    mask[1, :, :, :4] = 1.0  # sample 0: empty mask, 1: half, 2: everything edited
    mask[2] = 1.0
    region = EditRegionPSNR()
    region.update(edit, target=source, mask=mask)
    preservation = PreservationPSNR()
    preservation.update(edit, source=source, mask=mask)
    assert (region.count.item(), region.skipped.item()) == (2, 1)
    assert (preservation.count.item(), preservation.skipped.item()) == (2, 1)
    assert math.isfinite(region.compute().item())
    assert preservation.compute().item() == pytest.approx(20.0, abs=1e-4)
    nothing = EditRegionPSNR()
    nothing.update(edit[:1], target=source[:1], mask=mask[:1])
    assert math.isnan(nothing.compute().item()) and nothing.skipped.item() == 1


def test_ssim_matches_the_closed_form_for_constant_frames() -> None:
    a, b = 0.3, 0.6  # [0, 1] values
    target = torch.full((1, 3, 2, 16, 16), 2 * a - 1)
    edit = torch.full((1, 3, 2, 16, 16), 2 * b - 1)
    c1 = 0.01**2  # flat frames: the contrast-structure term is exactly 1
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    assert EditSSIM().score(edit, target=target).item() == pytest.approx(expected, rel=1e-5)
    noisy = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1)
    assert EditSSIM().score(target, target=target).item() == pytest.approx(1.0, abs=1e-6)
    assert EditSSIM().score(noisy, target=target).item() < 0.9


def test_identity_and_oracle_bound_the_recolor_example() -> None:
    source, target, mask = recolor_example()
    inputs = {"source": source, "target": target, "mask": mask}
    identity = {
        name: cls().score(source, **inputs).item()
        for name, cls in (
            ("psnr", EditPSNR),
            ("ssim", EditSSIM),
            ("region", EditRegionPSNR),
            ("keep", PreservationPSNR),
        )
    }
    oracle = {
        name: cls().score(target, **inputs).item()
        for name, cls in (("psnr", EditPSNR), ("ssim", EditSSIM), ("region", EditRegionPSNR))
    }
    assert identity["keep"] == PSNR_CAP_DB
    assert identity["region"] < 10.0
    assert identity["psnr"] < 20.0 and identity["ssim"] < 0.95
    assert oracle == {"psnr": PSNR_CAP_DB, "ssim": pytest.approx(1.0), "region": PSNR_CAP_DB}


def test_warp_error_is_small_for_static_and_moving_texture_and_large_for_flicker() -> None:
    static = translating_video(0)
    moving = translating_video(2)
    flicker = static.clone()
    flicker[:, :, 1::2] = (flicker[:, :, 1::2] + 0.5).clamp(-1, 1)
    metric = TemporalConsistency()
    static_err = metric.score(static).item()
    moving_err = metric.score(moving).item()
    flicker_err = metric.score(flicker).item()
    assert static_err < 0.005
    assert moving_err < 0.01
    assert flicker_err > 0.1 > 3 * moving_err
    assert math.isnan(metric.score(static[:, :, :1]).item())  # one frame: nothing to compare


def test_motion_fidelity_zero_for_same_motion_and_positive_for_different() -> None:
    source = translating_video(2)
    frozen = source[:, :, :1].repeat(1, 1, 4, 1, 1)
    metric = MotionFidelity()
    assert metric.score(source, source=source).item() == pytest.approx(0.0, abs=1e-6)
    epe = metric.score(frozen, source=source).item()
    assert 1.5 < epe < 2.5  # the source moves 2 px per frame, the edit not at all


def test_motion_fidelity_outside_mask_ignores_the_edited_region() -> None:
    source = translating_video(2)
    edit = source.clone()
    edit[..., 32:] = source[:, :, :1, :, 32:]  # right half frozen: motion changed there
    mask = torch.zeros(1, 1, 4, 64, 64)
    mask[..., 24:] = 1.0
    whole = MotionFidelity().score(edit, source=source).item()
    outside = MotionFidelity(outside_mask=True).score(edit, source=source, mask=mask).item()
    assert outside < 0.5 * whole
    everything = torch.ones_like(mask)
    masked_all = MotionFidelity(outside_mask=True).score(edit, source=source, mask=everything)
    assert math.isnan(masked_all.item())
    with pytest.raises(ValueError, match="needs `mask`"):
        MotionFidelity(outside_mask=True).score(edit, source=source)


def test_inputs_are_validated_with_clear_errors() -> None:
    video = torch.zeros(1, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="needs `target`"):
        EditPSNR().score(video)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        EditPSNR().score(video + 200.0, target=video)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        EditPSNR().score(video[:, :, 0], target=video)
    with pytest.raises(ValueError, match="mask"):
        EditRegionPSNR().score(video, target=video, mask=torch.zeros(1, 1, 2, 8, 8))
    with pytest.raises(ValueError, match="differs"):
        EditPSNR().score(video, target=video[:, :, :1])


def test_merging_two_halves_equals_one_metric_over_the_whole() -> None:
    source, target, mask = recolor_example()
    batch = torch.cat([source, target, (source + target) / 2, source * 0.5])
    truth = torch.cat([target] * 4)
    masks = torch.cat([mask, torch.zeros_like(mask), mask, mask])  # sample 1: empty region
    for cls in (EditPSNR, EditRegionPSNR, TemporalConsistency):
        whole, first, second = cls(), cls(), cls()
        whole.update(batch, target=truth, mask=masks)
        first.update(batch[:2], target=truth[:2], mask=masks[:2])
        second.update(batch[2:], target=truth[2:], mask=masks[2:])
        first.merge_state(second)
        torch.testing.assert_close(first.compute(), whole.compute())
        assert first.skipped.item() == whole.skipped.item()


def test_precomputed_scores_accumulate_like_update() -> None:
    target = torch.zeros(2, 3, 1, 8, 8)
    metric = EditPSNR()
    metric.update(target + 0.2, target=target)
    assert metric.compute().item() == pytest.approx(20.0, abs=1e-4)
    metric.add_scores(metric.score(target + 0.02, target=target))  # the per-record path
    metric.add_scores(torch.tensor([math.nan]))
    assert metric.compute().item() == pytest.approx(30.0, abs=1e-4)  # not the cached 20
    assert (metric.count.item(), metric.skipped.item()) == (4, 1)


def test_directions_match_the_classes() -> None:
    directions = metric_directions()
    assert directions["psnr"] and directions["clip_text"]
    assert not directions["warp_error"] and not directions["motion_epe"]


# ----------------------------------------------------------------------------- CLIP / DINO


def _tiny_clip(path: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    common = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    config = CLIPConfig(
        text_config={
            **common,
            "num_attention_heads": 2,
            "vocab_size": len(vocab),
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={**common, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def _tiny_dino(path: Path) -> Path:
    from transformers import AutoModel, BitImageProcessor, Dinov2Config

    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    AutoModel.from_config(config).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("encoders")
    return _tiny_clip(root / "clip"), _tiny_dino(root / "dino")


def test_clip_text_alignment_scores_each_sample(model_dirs: tuple[Path, Path]) -> None:
    clip_dir, _ = model_dirs
    metric = ClipTextAlignment(str(clip_dir))
    video = torch.rand(2, 3, 3, 40, 48) * 2 - 1
    texts = ["make the car red", "a cat on a sofa with a very long description of it all"]
    scores = metric.score(video, texts=texts)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert (scores.abs() <= 100).all()
    swapped = metric.score(video, texts=texts[::-1])
    assert not torch.allclose(scores, swapped)
    assert not any("vision_model" in key for key in metric.state_dict())
    with pytest.raises(ValueError, match="needs `texts`"):
        metric.score(video)


def test_frame_consistency_is_one_for_a_frozen_video(model_dirs: tuple[Path, Path]) -> None:
    clip_dir, dino_dir = model_dirs
    frozen = (torch.rand(1, 3, 1, 32, 32) * 2 - 1).repeat(1, 1, 3, 1, 1)
    changing = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    for metric in (ClipFrameConsistency(str(clip_dir)), DinoFrameConsistency(str(dino_dir))):
        assert metric.score(frozen).item() == pytest.approx(1.0, abs=1e-5)
        assert metric.score(changing).item() < 0.9999
        assert math.isnan(metric.score(frozen[:, :, :1]).item())


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="could not load the CLIP model"):
        ClipTextAlignment(str(tmp_path / "nowhere"))


def test_build_metrics_explains_every_skipped_metric() -> None:
    metrics, notices = build_metrics(has_target=False, has_mask=False)
    assert set(metrics) == {"warp_error", "motion_epe", "effnet_frame", "effnet_preservation"}
    assert metrics["effnet_preservation"].outside_mask is False
    text = "\n".join(notices)
    assert "no --clip-path given" in text and "no --dino-path given" in text
    assert "no targets" in text and "no masks" in text
    assert metrics["motion_epe"].outside_mask is False


def test_build_metrics_with_everything(model_dirs: tuple[Path, Path]) -> None:
    clip_dir, dino_dir = model_dirs
    metrics, notices = build_metrics(str(clip_dir), str(dino_dir), has_target=True, has_mask=True)
    assert set(metrics) == set(metric_directions())
    assert notices == []
    assert metrics["motion_epe"].outside_mask is True


def test_missing_opencv_names_the_eval_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match="eval"):
        TemporalConsistency()
    metrics, notices = build_metrics(has_target=True, has_mask=True)
    assert "warp_error" not in metrics and "motion_epe" not in metrics
    assert any("eval" in notice and "warp error" in notice for notice in notices)


@pytest.mark.gpu
def test_metrics_run_on_cuda(model_dirs: tuple[Path, Path]) -> None:
    clip_dir, _ = model_dirs
    source, target, mask = (x.cuda() for x in recolor_example())
    for metric in (EditRegionPSNR(), TemporalConsistency(), ClipFrameConsistency(str(clip_dir))):
        metric = metric.to("cuda")
        metric.update(target, source=source, target=target, mask=mask)
        value = metric.compute()
        assert value.device.type == "cuda" and torch.isfinite(value)


@pytest.mark.parametrize("opencv", [True, False])
def test_ssim_per_frame_matches_torchmetrics(opencv: bool, monkeypatch) -> None:
    from torchmetrics.functional.image import structural_similarity_index_measure

    from sama.evaluation.metrics import ssim_per_frame

    if not opencv:
        monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError: torch path
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 23, 41, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(a.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    reference = structural_similarity_index_measure(
        a,
        b,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        reduction="none",
        data_range=1.0,
        k1=0.01,
        k2=0.03,
    )
    torch.testing.assert_close(ssim_per_frame(a, b), reference, rtol=0, atol=1e-12)


def test_video_flows_are_cached_by_content_and_equal_recomputation() -> None:
    from sama.evaluation import metrics

    pytest.importorskip("cv2")
    frames = ((translating_video(2)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.numpy()
    metrics._FLOWS.clear()
    flows = metrics.video_flows(frames)
    assert len(flows) == 3 and metrics.video_flows(frames.copy()) is flows  # same bytes: a hit
    for j, flow in enumerate(flows):
        np.testing.assert_array_equal(flow, metrics.farneback_flow(frames[j], frames[j + 1]))
    other = frames.copy()
    other[0, 0, 0, 0] ^= 1  # one bit differs: not the cached flows
    assert metrics.video_flows(other) is not flows
    budget = metrics._FLOWS.budget
    try:
        metrics._FLOWS.budget = 1  # too large to keep: computed pair by pair, identical
        lazy = metrics.video_flows(frames)
        assert not isinstance(lazy, list) and len(lazy) == 3
        np.testing.assert_array_equal(lazy[2], flows[2])
    finally:
        metrics._FLOWS.budget = budget
        metrics._FLOWS.clear()
