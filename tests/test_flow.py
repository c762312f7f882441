"""Flow matching: timesteps, noising, loss, and the joint CFG sampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from sama.flow import (
    FlowSampler,
    add_noise,
    masked_mse,
    sample_timesteps,
    shift_sigma,
    to_wan_timestep,
    velocity_target,
)
from sama.model import SamaTransformer, tiny_wan_config


def test_shift_sigma_formula() -> None:
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    shifted = shift_sigma(sigma, 3.0)
    expected = torch.tensor([0.0, 0.75 / 1.5, 1.5 / 2.0, 1.0])
    torch.testing.assert_close(shifted, expected)
    torch.testing.assert_close(shift_sigma(sigma, 1.0), sigma)


@pytest.mark.parametrize("distribution", ["logit_normal", "uniform"])
def test_sample_timesteps_range_and_determinism(distribution: str) -> None:
    a = sample_timesteps(512, distribution=distribution, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(512, distribution=distribution, generator=torch.Generator().manual_seed(3))
    assert a.shape == (512,) and torch.equal(a, b)
    assert torch.all((a > 0) & (a < 1))
    assert abs(a.mean().item() - 0.5) < 0.05


def test_sample_timesteps_shift_applies_to_sigma() -> None:
    plain = sample_timesteps(64, distribution="uniform", generator=torch.Generator().manual_seed(0))
    shifted = sample_timesteps(
        64, distribution="uniform", shift=5.0, generator=torch.Generator().manual_seed(0)
    )
    sigma = 1 - plain
    torch.testing.assert_close(shifted, 1 - 5 * sigma / (1 + 4 * sigma))
    assert shifted.mean() < plain.mean()  # shift > 1 means more noise, smaller t


def test_sample_timesteps_rejects_unknown_distribution() -> None:
    with pytest.raises(ValueError, match="distribution"):
        sample_timesteps(4, distribution="beta")


def test_add_noise_endpoints_and_broadcast() -> None:
    x1, x0 = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    torch.testing.assert_close(add_noise(x1, x0, torch.ones(3)), x1)
    torch.testing.assert_close(add_noise(x1, x0, torch.zeros(3)), x0)
    t = torch.tensor([0.1, 0.5, 0.9])
    mixed = add_noise(x1, x0, t)
    for i in range(3):
        torch.testing.assert_close(mixed[i], t[i] * x1[i] + (1 - t[i]) * x0[i])
    tokens1, tokens0 = torch.randn(3, 65, 8), torch.randn(3, 65, 8)
    assert add_noise(tokens1, tokens0, t).shape == (3, 65, 8)
    with pytest.raises(ValueError):
        add_noise(x1, x0, torch.ones(2))


def test_velocity_is_the_time_derivative_of_the_path() -> None:
    x1, x0 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    t, h = torch.tensor([0.2, 0.6]), 1e-3
    derivative = (add_noise(x1, x0, t + h) - add_noise(x1, x0, t)) / h
    torch.testing.assert_close(derivative, velocity_target(x1, x0), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(
        to_wan_timestep(torch.tensor([1.0, 0.0, 0.25])), torch.tensor([0.0, 1000.0, 750.0])
    )


def test_masked_mse() -> None:
    pred, target = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    torch.testing.assert_close(masked_mse(pred, target), F.mse_loss(pred, target))
    mask = (torch.rand(2, 1, 2, 4, 4) > 0.5).float()
    full_mask = mask.expand_as(pred).bool()
    per_sample = [(pred - target)[b][full_mask[b]].square().mean() for b in range(2)]
    torch.testing.assert_close(masked_mse(pred, target, mask), torch.stack(per_sample).mean())
    weights = torch.rand(2, 1, 2, 4, 4)
    weighted = [
        ((pred[b] - target[b]).square() * weights[b]).sum() / (weights[b].sum() * 3)
        for b in range(2)
    ]
    torch.testing.assert_close(masked_mse(pred, target, weights), torch.stack(weighted).mean())
    # a batch's loss is the mean of its halves' losses (a global batch split over 2 ranks)
    halves = [masked_mse(pred[b : b + 1], target[b : b + 1], mask[b : b + 1]) for b in range(2)]
    torch.testing.assert_close(masked_mse(pred, target, mask), torch.stack(halves).mean())


def test_masked_mse_empty_mask_is_zero_with_finite_grad() -> None:
    pred = torch.randn(2, 3, 4, requires_grad=True)
    loss = masked_mse(pred, torch.randn(2, 3, 4), torch.zeros(2, 1, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(pred.grad == 0)


def test_sampler_schedule_is_shifted_linear() -> None:
    sampler = FlowSampler(num_steps=4, shift=5.0)
    sigmas = sampler.sigmas()
    base = torch.tensor([1.0, 0.75, 0.5, 0.25])
    torch.testing.assert_close(sigmas[:-1], shift_sigma(base, 5.0))
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0


def test_one_euler_step_with_true_velocity_lands_on_data() -> None:
    """Convention check against diffusers: sigma 1 -> 0 with v = x1 - x0 gives x1 exactly."""
    x1 = torch.randn(2, 4, 1, 3, 3)
    noise = torch.randn(2, 4, 1, 3, 3, generator=torch.Generator().manual_seed(5))

    def true_velocity(x, sem, timestep, cond):
        return velocity_target(x1, noise), None

    latents, semantic = FlowSampler(num_steps=1).sample(
        true_velocity, x1.shape, text_scale=1.0, generator=torch.Generator().manual_seed(5)
    )
    assert semantic is None
    torch.testing.assert_close(latents, x1)

    # The same step through diffusers directly, in its own (sigma = 1 - t) convention.
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=[1.0])
    stepped = scheduler.step(noise - x1, scheduler.timesteps[0], noise, return_dict=False)[0]
    torch.testing.assert_close(stepped, x1)


def _oracle(x1: torch.Tensor, s1: torch.Tensor | None):
    """The true velocity toward fixed data from any point: (x1 - x_t) / sigma."""

    def model_fn(x, sem, timestep, cond):
        sigma = timestep / 1000
        v = (x1 - x) / sigma.view(-1, *([1] * (x.ndim - 1)))
        v_sem = None if sem is None else (s1 - sem) / sigma.view(-1, 1, 1)
        return v, v_sem

    return model_fn


@pytest.mark.parametrize("num_steps", [1, 3, 20])
def test_sampler_with_oracle_lands_on_data_jointly(num_steps: int) -> None:
    x1, s1 = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 65, 8)
    latents, semantic = FlowSampler(num_steps=num_steps, shift=5.0).sample(
        _oracle(x1, s1),
        x1.shape,
        s1.shape,
        text_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(latents, x1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(semantic, s1, atol=1e-5, rtol=1e-5)


def test_sampler_deterministic_under_generator() -> None:
    def model_fn(x, sem, timestep, cond):
        scale = 1.0 if cond == "full" else 0.5
        return -scale * x * (timestep.view(-1, 1, 1, 1, 1) / 1000), -sem * scale

    sampler = FlowSampler(num_steps=5)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        generator = torch.Generator().manual_seed(seed)
        return sampler.sample(model_fn, (2, 4, 1, 4, 4), (2, 65, 8), generator=generator)

    (a, sa), (b, sb), (c, _) = run(7), run(7), run(8)
    assert torch.equal(a, b) and torch.equal(sa, sb)
    assert not torch.equal(a, c)


def _constant_model(values: dict[str, float], calls: list[str]):
    def model_fn(x, sem, timestep, cond):
        calls.append(cond)
        return torch.full_like(x, values[cond]), torch.full_like(sem, 2 * values[cond])

    return model_fn


def test_text_guidance_formula_and_calls() -> None:
    values = {"full": 3.0, "no_text": 1.0, "no_source": -2.0}
    shape, sem_shape = (1, 2, 1, 2, 2), (1, 65, 4)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=generator)
    sem_noise = torch.randn(sem_shape, generator=generator)

    calls: list[str] = []
    x, sem = FlowSampler(num_steps=1).sample(
        _constant_model(values, calls),
        shape,
        sem_shape,
        text_scale=4.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert calls == ["full", "no_text"]
    guided = 1.0 + 4.0 * (3.0 - 1.0)
    torch.testing.assert_close(x, noise + guided)
    torch.testing.assert_close(sem, sem_noise + 2 * guided)

    calls.clear()
    FlowSampler(num_steps=2).sample(
        _constant_model(values, calls), shape, sem_shape, text_scale=1.0
    )
    assert calls == ["full", "full"]


def test_two_scale_guidance_formula() -> None:
    values = {"full": 3.0, "no_text": 1.0, "no_source": -2.0}
    shape, sem_shape = (1, 2, 1, 2, 2), (1, 65, 4)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(shape, generator=generator)
    calls: list[str] = []
    x, _ = FlowSampler(num_steps=1).sample(
        _constant_model(values, calls),
        shape,
        sem_shape,
        text_scale=5.0,
        source_scale=1.5,
        generator=torch.Generator().manual_seed(1),
    )
    assert sorted(calls) == ["full", "no_source", "no_text"]
    guided = -2.0 + 1.5 * (1.0 - -2.0) + 5.0 * (3.0 - 1.0)
    torch.testing.assert_close(x, noise + guided)


def test_sampler_rejects_bad_model_output() -> None:
    def wrong_shape(x, sem, timestep, cond):
        return x[:, :1], None

    with pytest.raises(ValueError, match="velocity"):
        FlowSampler(num_steps=1).sample(wrong_shape, (1, 2, 1, 2, 2), text_scale=1.0)

    def missing_semantic(x, sem, timestep, cond):
        return x, None

    with pytest.raises(ValueError, match="semantic velocity"):
        FlowSampler(num_steps=1).sample(
            missing_semantic, (1, 2, 1, 2, 2), (1, 3, 4), text_scale=1.0
        )


def test_sampler_drives_the_tiny_transformer() -> None:
    model = SamaTransformer(tiny_wan_config(), semantic_dim=8, semantic_hidden=16).eval()
    text, source = torch.randn(1, 5, 32), torch.randn(1, 16, 1, 8, 8)
    seen: list[float] = []

    def model_fn(x, sem, timestep, cond):
        seen.append(float(timestep[0]))
        out = model(
            x,
            timestep,
            text * (cond == "full"),
            source_latents=None if cond == "no_source" else source,
            semantic_tokens=sem,
        )
        return out.velocity, out.semantic

    latents, semantic = FlowSampler(num_steps=2, shift=5.0).sample(
        model_fn, (1, 16, 2, 8, 8), (1, 65, 8), text_scale=5.0, source_scale=2.0
    )
    assert latents.shape == (1, 16, 2, 8, 8) and semantic.shape == (1, 65, 8)
    assert torch.isfinite(latents).all()
    assert seen[0] == 1000.0 and seen[-1] == pytest.approx(
        1000 * shift_sigma(torch.tensor(0.5), 5.0).item()
    )
