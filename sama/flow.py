"""Flow matching for SAMA: timesteps, noising, velocity target, loss and sampler.

Convention (the method's, used everywhere in this project)::

    x_t = t * x1 + (1 - t) * x0        x1 = data, x0 ~ N(0, I), t in [0, 1], t = 1 is clean
    v   = dx_t/dt = x1 - x0            the velocity the model predicts
    Wan timestep fed to the model = 1000 * (1 - t) = 1000 * sigma

diffusers' flow schedulers use ``sigma = 1 - t`` (1 = noise) and step with the velocity
``x0 - x1 = -v``; :class:`FlowSampler` converts explicitly at that boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor
from tqdm.auto import tqdm

WAN_TIMESTEP_SCALE = 1000.0

COND_FULL = "full"
COND_NO_TEXT = "no_text"
COND_NO_SOURCE = "no_source"

ModelFn = Callable[[Tensor, Tensor | None, Tensor, str], tuple[Tensor, Tensor | None]]


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """Wan/SD3 timestep shift on the noise level: ``shift*sigma / (1 + (shift-1)*sigma)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def to_wan_timestep(t: Tensor) -> Tensor:
    """Flow time ``t`` (1 = clean) -> Wan's timestep ``1000 * (1 - t)``."""
    return WAN_TIMESTEP_SCALE * (1 - t)


def sample_timesteps(
    batch: int,
    *,
    distribution: Literal["logit_normal", "uniform"] = "logit_normal",
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one flow time ``t`` per sample, ``(batch,)`` float32 in (0, 1), 1 = clean.

    The noise level ``sigma = 1 - t`` is drawn from ``sigmoid(N(0, 1))`` (``"logit_normal"``,
    SD3) or ``U(0, 1)`` (``"uniform"``), then shifted with :func:`shift_sigma` (shift > 1 puts
    more samples at high noise, as Wan does for large resolutions).
    """
    if shift <= 0:
        raise ValueError(f"sample_timesteps: shift must be > 0, got {shift}")
    if device is None and generator is not None:
        device = generator.device
    if distribution == "logit_normal":
        sigma = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    elif distribution == "uniform":
        sigma = torch.rand(batch, generator=generator, device=device)
    else:
        raise ValueError(
            f"sample_timesteps: distribution must be 'logit_normal' or 'uniform', got {distribution!r}"
        )
    return 1 - shift_sigma(sigma, shift)


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """Broadcast per-sample ``t`` of shape ``(B,)`` over the trailing dims of ``like``."""
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    if t.ndim == 0:
        return t
    if t.shape[0] != like.shape[0] or t.ndim != 1:
        raise ValueError(f"flow: t must be (B,)=({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x1: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """``x_t = t * x1 + (1 - t) * x0`` with ``t`` ``(B,)`` broadcast over any trailing dims."""
    if x1.shape != x0.shape:
        raise ValueError(f"add_noise: x1 {tuple(x1.shape)} and x0 {tuple(x0.shape)} differ")
    t = _expand(t, x1)
    return t * x1 + (1 - t) * x0


def velocity_target(x1: Tensor, x0: Tensor) -> Tensor:
    """The flow-matching regression target ``x1 - x0`` (data minus noise)."""
    return x1 - x0


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the batch of each sample's squared error over the elements its mask counts
    (a scalar, float32).

    ``pred``, ``target``: ``(B, ...)``. ``mask`` broadcasts to ``pred`` (e.g. ``(B, 1, T, H,
    W)`` over channels) and may be fractional (weights). Sample ``b`` scores
    ``sum(mask_b * err_b) / sum(mask_b)`` over its broadcast shape (0, with a valid zero
    gradient, when its mask is all zero) and the loss is the mean of the ``B`` scores: every
    sample weighs the same whatever its mask covers, so the loss of a batch is the mean of the
    losses of any equal split of it (a global batch split over ranks trains as one batch).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"masked_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.mean()
    weight = torch.broadcast_to(mask.to(err.dtype), err.shape).flatten(1)
    total = weight.sum(dim=1)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    return ((err.flatten(1) * weight).sum(dim=1) / safe_total).mean()


@dataclass(frozen=True)
class SamplingSettings:
    """How an edit is sampled: the one settings object of ``sama edit`` / ``predict`` / ``test``
    and the training-time edit monitor.

    Defaults are the released inference code's: 50 Euler steps, text guidance 5 against the
    negative prompt, no separate source guidance, timestep shift 5, seed 0 (seeds the initial
    noise; the same seed gives the same edit).
    """

    steps: int = 50
    guidance: float = 5.0
    source_guidance: float | None = None
    shift: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"sampling shift must be > 0, got {self.shift}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``results.json`` and an export record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SamplingSettings:
        """Build from a dict; unknown keys are an error naming them."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"sampling settings: unknown field(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**values)

    def updated(self, **changes: Any) -> SamplingSettings:
        """A copy with the non-``None`` ``changes`` applied (CLI overrides)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class FlowSampler:
    """Euler flow-matching sampler that denoises target latents and semantic tokens jointly.

    The sigma schedule comes from diffusers' ``FlowMatchEulerDiscreteScheduler`` given the
    unshifted sigmas ``1, 1 - 1/n, ..., 1/n`` and ``shift`` (Wan: 5.0), so step ``i`` runs at
    ``sigma_i = shift_sigma(1 - i/n)`` and ends at 0. Each step calls ``scheduler.step`` once on
    the target and semantic tensors flattened together, with model output ``-v`` (diffusers'
    velocity is ``x0 - x1``).

    Guidance (``v`` stands for both the target and the semantic velocity):

    * ``source_scale is None``:
      ``v = v[no_text] + text_scale * (v[full] - v[no_text])``
      (``text_scale == 1`` calls only ``full``);
    * ``source_scale`` set (two-scale, InstructPix2Pix style):
      ``v = v[no_source] + source_scale * (v[no_text] - v[no_source])
      + text_scale * (v[full] - v[no_text])``.

    ``model_fn(x_t, sem_t, timestep_wan, cond) -> (velocity, semantic_velocity)`` receives the
    ``(B,)`` Wan timestep ``1000 * sigma`` and ``cond`` in {"full", "no_text", "no_source"}:
    ``full`` = instruction + source; ``no_text`` = source with the negative/empty prompt;
    ``no_source`` = the fully unconditional branch (no source tokens *and* the negative prompt).
    ``sem_t`` and ``semantic_velocity`` are ``None`` when ``semantic_shape`` is ``None``.
    """

    def __init__(self, num_steps: int = 50, shift: float = 5.0) -> None:
        if num_steps < 1:
            raise ValueError(f"FlowSampler: num_steps must be >= 1, got {num_steps}")
        if shift <= 0:
            raise ValueError(f"FlowSampler: shift must be > 0, got {shift}")
        self.num_steps = num_steps
        self.shift = shift

    def scheduler(
        self, device: torch.device | str | None = None
    ) -> FlowMatchEulerDiscreteScheduler:
        """A fresh diffusers scheduler set to this sampler's ``num_steps + 1`` sigmas."""
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)
        base = np.linspace(1.0, 0.0, self.num_steps + 1)[:-1]
        scheduler.set_timesteps(sigmas=base.tolist(), device=device)
        return scheduler

    def sigmas(self) -> Tensor:
        """The noise levels visited, ``(num_steps + 1,)`` from 1 down to 0."""
        return self.scheduler().sigmas

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        target_shape: tuple[int, ...],
        semantic_shape: tuple[int, ...] | None = None,
        *,
        text_scale: float = 5.0,
        source_scale: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor | None]:
        """Denoise from ``N(0, I)`` to clean ``(latents, semantic_tokens)`` (``t = 1``).

        ``target_shape`` is ``(B, C, T, H, W)``; ``semantic_shape`` ``(B, N, D_sem)`` or None.
        The initial noise is drawn from ``generator`` (target first, then semantic), so a seeded
        generator makes the result deterministic. ``device`` defaults to the generator's.
        """
        if device is None:
            device = generator.device if generator is not None else "cpu"
        x = torch.randn(target_shape, generator=generator, device=device, dtype=dtype)
        sem = None
        if semantic_shape is not None:
            if semantic_shape[0] != target_shape[0]:
                raise ValueError(
                    f"FlowSampler: semantic_shape batch {semantic_shape[0]} != target batch "
                    f"{target_shape[0]}"
                )
            sem = torch.randn(semantic_shape, generator=generator, device=device, dtype=dtype)
        batch = target_shape[0]
        scheduler = self.scheduler(device)
        steps = scheduler.timesteps
        for timestep in tqdm(steps, disable=not progress, desc="sampling"):
            timestep_wan = timestep.expand(batch).to(dtype)
            v, v_sem = self._guided(model_fn, x, sem, timestep_wan, text_scale, source_scale)
            flat = self._flatten(x, sem)
            flat_velocity = self._flatten(v, v_sem)
            # diffusers steps with d x / d sigma = x0 - x1 = -v
            flat = scheduler.step(-flat_velocity, timestep, flat, return_dict=False)[0]
            x, sem = self._unflatten(flat, x, sem)
        return x, sem

    @staticmethod
    def _guided(
        model_fn: ModelFn,
        x: Tensor,
        sem: Tensor | None,
        timestep_wan: Tensor,
        text_scale: float,
        source_scale: float | None,
    ) -> tuple[Tensor, Tensor | None]:
        def call(cond: str) -> tuple[Tensor, Tensor | None]:
            v, v_sem = model_fn(x, sem, timestep_wan, cond)
            if v.shape != x.shape:
                raise ValueError(
                    f"FlowSampler: model_fn({cond!r}) velocity {tuple(v.shape)} != {tuple(x.shape)}"
                )
            if (sem is None) != (v_sem is None):
                raise ValueError(
                    f"FlowSampler: model_fn({cond!r}) must return a semantic velocity exactly "
                    "when semantic tokens are sampled"
                )
            return v, v_sem

        full = call(COND_FULL)
        if source_scale is None and text_scale == 1.0:
            return full
        no_text = call(COND_NO_TEXT)
        none = call(COND_NO_SOURCE) if source_scale is not None else (None, None)
        velocity = _guidance(full[0], no_text[0], none[0], text_scale, source_scale)
        semantic = None
        if full[1] is not None:
            semantic = _guidance(full[1], no_text[1], none[1], text_scale, source_scale)
        return velocity, semantic

    @staticmethod
    def _flatten(x: Tensor, sem: Tensor | None) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if sem is None:
            return flat
        return torch.cat([flat, sem.reshape(sem.shape[0], -1)], dim=1)

    @staticmethod
    def _unflatten(flat: Tensor, x: Tensor, sem: Tensor | None) -> tuple[Tensor, Tensor | None]:
        n = x[0].numel()
        new_x = flat[:, :n].reshape(x.shape).to(x.dtype)
        if sem is None:
            return new_x, None
        return new_x, flat[:, n:].reshape(sem.shape).to(sem.dtype)


def _guidance(
    full: Tensor,
    no_text: Tensor,
    none: Tensor | None,
    text_scale: float,
    source_scale: float | None,
) -> Tensor:
    """Classifier-free guidance on one velocity (see :class:`FlowSampler`)."""
    if source_scale is None or none is None:
        return no_text + text_scale * (full - no_text)
    return none + source_scale * (no_text - none) + text_scale * (full - no_text)
