"""Edit-evaluation metrics as torchmetrics ``Metric`` classes.

Every metric takes the same keyword inputs, so a caller can loop over a dict of them:

- ``edit``: the edited video, float ``(B, 3, T, H, W)`` in [-1, 1] (an image is ``T = 1``);
- ``source``: the unedited input video, same layout;
- ``target``: the ground-truth edit, same layout;
- ``mask``: ``(B, 1, T, H, W)`` float in [0, 1], 1 = edited region (soft masks act as weights);
- ``texts``: ``list[str]`` of length B, the text an edit should match (target caption when the
  benchmark has one, otherwise the instruction).

Each metric first turns a batch into one score per sample (``score``, shape ``(B,)``, float64,
NaN where the sample has nothing to measure, e.g. an empty mask region), then ``update``
accumulates the finite scores as sum + count tensors reduced with ``"sum"``, which is exact under
DDP and with ``merge_state``. ``compute`` returns the mean over counted samples (NaN when no
sample counted); ``skipped`` counts the excluded samples. ``score`` is public so that per-sample
records can be written without running the metric twice: call ``add_scores(metric.score(...))``.

Formulas that need [0, 1] data convert with ``x01 = (x + 1) / 2``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

PSNR_CAP_DB = 100.0
"""PSNR reported for a sample whose MSE is 0 (or so small that 10 log10(1/MSE) exceeds it)."""

_RANGE_TOLERANCE = 1e-3


def require_cv2() -> Any:
    """Import OpenCV, or raise an error naming the ``eval`` extra that provides it."""
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "optical-flow metrics need OpenCV: install the eval extra "
            "(pip install 'sama-edit[eval]', which brings opencv-python-headless)"
        ) from err
    return cv2


def _check_video(name: str, video: Tensor, metric: str) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{metric}: `{name}` must be (B, 3, T, H, W); got {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(f"{metric}: `{name}` must be float in [-1, 1]; got dtype {video.dtype}")
    lo, hi = video.min().item(), video.max().item()
    if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{metric}: `{name}` must lie in [-1, 1]; got values in [{lo:.3g}, {hi:.3g}] "
            "(convert uint8 with x / 127.5 - 1)"
        )


def to_unit_range(video: Tensor) -> Tensor:
    """Map a float video from [-1, 1] to [0, 1] (clamped)."""
    return ((video.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB of [0, 1] data, ``10 log10(1 / mse)``, capped at ``PSNR_CAP_DB`` (mse = 0)."""
    mse = mse.to(torch.float64)
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-30))
    return psnr.clamp(max=PSNR_CAP_DB)


def _weighted_psnr(a: Tensor, b: Tensor, weight: Tensor | None) -> Tensor:
    """Per-sample PSNR of two ``(B, 3, T, H, W)`` videos in [-1, 1].

    ``weight`` is ``(B, 1, T, H, W)`` in [0, 1] (None = every pixel). The MSE is over the
    weighted pixels and all three channels, on [0, 1] data. Samples with zero total weight
    get NaN.
    """
    sq = ((a.double() - b.double()) / 2.0).square().sum(dim=1, keepdim=True)  # (B,1,T,H,W)
    if weight is None:
        weight = torch.ones_like(sq)
    weight = weight.double()
    area = weight.flatten(1).sum(dim=1)
    mse = (sq * weight).flatten(1).sum(dim=1) / (3.0 * area.clamp_min(1e-12))
    psnr = psnr_from_mse(mse)
    return torch.where(area > 0, psnr, torch.full_like(psnr, math.nan))


class EditMetric(Metric):
    """Base class: per-sample scores accumulated as sum + count (DDP-exact).

    Subclasses set ``higher_is_better``, ``requires`` (which of ``source``, ``target``, ``mask``,
    ``texts`` they need) and implement ``_score`` returning ``(B,)`` float64 with NaN for
    samples that are excluded.
    """

    is_differentiable: ClassVar[bool] = False
    full_state_update: ClassVar[bool] = False
    higher_is_better: ClassVar[bool]
    requires: ClassVar[tuple[str, ...]] = ()

    total: Tensor
    count: Tensor
    skipped: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(
        self,
        edit: Tensor,
        *,
        source: Tensor | None = None,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> Tensor:
        """Per-sample scores ``(B,)`` float64; NaN marks a sample excluded from this metric."""
        name = type(self).__name__
        inputs = {"source": source, "target": target, "mask": mask, "texts": texts}
        for key in self.requires:
            if inputs[key] is None:
                raise ValueError(f"{name} needs `{key}`; got None")
        _check_video("edit", edit, name)
        for key in ("source", "target"):
            video = inputs[key]
            if video is not None:
                _check_video(key, video, name)
                if video.shape != edit.shape:
                    raise ValueError(
                        f"{name}: `{key}` shape {tuple(video.shape)} differs from `edit` "
                        f"{tuple(edit.shape)}; resize both to the same (B, 3, T, H, W)"
                    )
        if mask is not None:
            b, _, t, h, w = edit.shape
            if tuple(mask.shape) != (b, 1, t, h, w):
                raise ValueError(
                    f"{name}: `mask` must be (B, 1, T, H, W) = {(b, 1, t, h, w)}; "
                    f"got {tuple(mask.shape)}"
                )
            if mask.min().item() < 0 or mask.max().item() > 1:
                raise ValueError(f"{name}: `mask` values must lie in [0, 1] (1 = edited region)")
        if texts is not None and len(texts) != edit.shape[0]:
            raise ValueError(f"{name}: got {len(texts)} texts for a batch of {edit.shape[0]}")
        return self._score(edit, source=source, target=target, mask=mask, texts=texts)

    @abstractmethod
    def _score(
        self,
        edit: Tensor,
        *,
        source: Tensor | None,
        target: Tensor | None,
        mask: Tensor | None,
        texts: Sequence[str] | None,
    ) -> Tensor:
        """Per-sample scores of validated inputs, ``(B,)`` float64 (any device), NaN = excluded."""

    def update(
        self,
        edit: Tensor | None = None,
        *,
        source: Tensor | None = None,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        texts: Sequence[str] | None = None,
        scores: Tensor | None = None,
    ) -> None:
        """Score a batch and accumulate it (see ``score``), or accumulate precomputed ``scores``."""
        if scores is None:
            if edit is None:
                raise ValueError(f"{type(self).__name__}.update needs `edit` or `scores`")
            scores = self.score(edit, source=source, target=target, mask=mask, texts=texts)
        scores = scores.detach().to(device=self.total.device, dtype=torch.float64).flatten()
        finite = torch.isfinite(scores)
        self.total += scores[finite].sum()
        self.count += finite.sum()
        self.skipped += (~finite).sum()

    def add_scores(self, scores: Tensor) -> None:
        """Accumulate per-sample scores ``(B,)`` from ``score``; NaN entries count as skipped."""
        self.update(scores=scores)

    def compute(self) -> Tensor:
        """Mean of the counted per-sample scores; NaN when no sample counted."""
        if self.count.item() == 0:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.total.device)
        return self.total / self.count


class EditPSNR(EditMetric):
    """PSNR of the edit against the target over the whole clip.

    Per sample: ``MSE = mean((edit01 - target01)^2)`` over channels, frames and pixels,
    ``PSNR = min(10 log10(1 / MSE), 100)`` dB; then the mean over samples. Range [0, 100] dB.
    """

    higher_is_better = True
    requires = ("target",)

    def _score(self, edit: Tensor, *, target: Tensor | None, **_: Any) -> Tensor:
        assert target is not None
        return _weighted_psnr(edit, target, None)


_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # torchmetrics' gaussian window for sigma 1.5: int(3.5 * 1.5 + 0.5) * 2 + 1 = 11
_SSIM_CHUNK_BYTES = 256 * 2**20  # float64 working set per chunk of frames


@functools.lru_cache(maxsize=1)
def _ssim_window() -> Tensor:
    """The normalised 1-D gaussian (11 taps, sigma 1.5) whose outer product is the SSIM window."""
    dist = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64)
    gauss = torch.exp(-((dist / _SSIM_SIGMA) ** 2) / 2)
    return gauss / gauss.sum()


def _blur_valid(x: Tensor, taps: list[float], dim: int) -> Tensor:
    """1-D correlation of ``x`` with ``taps`` along ``dim``, valid positions only (a weighted sum
    of shifted slices: much faster than a float64 depthwise ``conv2d`` on the CPU)."""
    size = x.shape[dim] - len(taps) + 1
    out = x.narrow(dim, 0, size) * taps[0]
    for k in range(1, len(taps)):
        out.add_(x.narrow(dim, k, size), alpha=taps[k])
    return out


def _ssim_blur(planes: Tensor) -> Tensor:
    """The SSIM gaussian (11x11, sigma 1.5) over each plane of float64 ``(M, K, H, W)``, borders
    reflected (``F.pad(mode="reflect")``); same shape. Uses OpenCV's separable filter when it
    imports (several times faster), else two 1-D passes in torch; both agree to ~1e-16."""
    r = _SSIM_RADIUS
    taps = _ssim_window()
    try:
        import cv2
    except ImportError:
        padded = F.pad(planes, (r, r, r, r), mode="reflect")
        return _blur_valid(_blur_valid(padded, taps.tolist(), dim=3), taps.tolist(), dim=2)
    kernel = taps.numpy()
    src = planes.detach().cpu().contiguous().numpy()
    out = np.empty_like(src)
    for m in range(src.shape[0]):
        for k in range(src.shape[1]):
            out[m, k] = cv2.sepFilter2D(
                src[m, k], cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT_101
            )
    return torch.from_numpy(out).to(planes.device)


def ssim_per_frame(a: Tensor, b: Tensor) -> Tensor:
    """SSIM of each frame pair: ``a``, ``b`` float ``(N, C, H, W)`` in [0, 1] -> ``(N,)`` float64.

    The same quantity as torchmetrics' ``structural_similarity_index_measure`` with
    ``gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1, k1=0.01, k2=0.03`` (frames
    reflect-padded by 5, the SSIM map averaged over channels and all ``H x W`` positions), but
    the 11x11 gaussian is separable (:func:`_ssim_blur`) and frames are processed in chunks, so
    the memory stays bounded (torchmetrics' float64 ``conv2d`` unfolds the whole batch: about
    150 GB for 81 frames of 832x464) and it runs over 50x faster. Results agree with
    torchmetrics to float64 rounding (~1e-15).
    """
    n, c, h, w = a.shape
    r = _SSIM_RADIUS
    if h <= r or w <= r:
        raise ValueError(f"SSIM needs frames of more than {r} pixels per side; got {h}x{w}")
    c1, c2 = 0.01**2, 0.03**2
    per_frame = 5 * c * (h + 2 * r) * (w + 2 * r) * 8 * 3
    step = max(1, _SSIM_CHUNK_BYTES // per_frame)
    out = []
    for start in range(0, n, step):
        x = a[start : start + step].double()
        y = b[start : start + step].double()
        blurred = _ssim_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1))  # (m, 5C, H, W)
        mu_x, mu_y, xx, yy, xy = blurred.split(c, dim=1)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        # in place, in torchmetrics' order of operations (same rounding, less memory traffic)
        var_x = xx.sub_(mu_xx).clamp_(min=0.0)
        var_y = yy.sub_(mu_yy).clamp_(min=0.0)
        upper = xy.sub_(mu_xy).mul_(2).add_(c2)  # 2 cov + C2
        lower = var_x.add_(var_y).add_(c2)
        numerator = mu_xy.mul_(2).add_(c1).mul_(upper)
        denominator = mu_xx.add_(mu_yy).add_(c1).mul_(lower)
        ssim_map = numerator.div_(denominator)
        out.append(ssim_map.reshape(ssim_map.shape[0], -1).mean(-1))
    return torch.cat(out)


class EditSSIM(EditMetric):
    """SSIM of the edit against the target, frame by frame, averaged over frames then samples.

    Standard SSIM on [0, 1] data: gaussian 11x11 window (sigma 1.5), ``C1 = (0.01)^2``,
    ``C2 = (0.03)^2``, frames reflect-padded, averaged over channels and pixels (torchmetrics'
    ``structural_similarity_index_measure``; computed by :func:`ssim_per_frame`). Range
    [-1, 1] (1 = identical). Frames must be at least 11 pixels high and wide.
    """

    higher_is_better = True
    requires = ("target",)

    def _score(self, edit: Tensor, *, target: Tensor | None, **_: Any) -> Tensor:
        assert target is not None
        b, c, t, h, w = edit.shape
        if h < 11 or w < 11:
            raise ValueError(f"EditSSIM needs frames of at least 11x11 pixels; got {h}x{w}")
        frames_e = to_unit_range(edit).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames_t = to_unit_range(target).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        return ssim_per_frame(frames_e, frames_t).reshape(b, t).mean(dim=1).double()


class EditRegionPSNR(EditMetric):
    """PSNR of the edit against the target inside the mask (the edited region).

    Per sample: ``MSE = sum(m * (edit01 - target01)^2) / (3 sum(m))`` with ``m`` the mask,
    PSNR as in ``EditPSNR`` (capped at 100 dB). Samples whose mask is all zero are excluded.
    Range [0, 100] dB.
    """

    higher_is_better = True
    requires = ("target", "mask")

    def _score(
        self, edit: Tensor, *, target: Tensor | None, mask: Tensor | None, **_: Any
    ) -> Tensor:
        assert target is not None and mask is not None
        return _weighted_psnr(edit, target, mask)


class PreservationPSNR(EditMetric):
    """PSNR of the edit against the source outside the mask (what should not change).

    Per sample: ``MSE = sum((1 - m) * (edit01 - source01)^2) / (3 sum(1 - m))``, PSNR as in
    ``EditPSNR`` (capped at 100 dB: an untouched background scores 100). Samples whose mask is
    all one (global edits such as style) are excluded. A mask is required: without one the
    metric would reward not editing at all, so ``build_metrics`` skips it with a notice.
    Range [0, 100] dB.
    """

    higher_is_better = True
    requires = ("source", "mask")

    def _score(
        self, edit: Tensor, *, source: Tensor | None, mask: Tensor | None, **_: Any
    ) -> Tensor:
        assert source is not None and mask is not None
        return _weighted_psnr(edit, source, 1.0 - mask)


# Farneback parameters (OpenCV's documented example values), used by both flow metrics.
_FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}


def _to_uint8_frames(video: Tensor) -> np.ndarray:
    """``(B, 3, T, H, W)`` in [-1, 1] -> numpy uint8 ``(B, T, H, W, 3)``."""
    frames = (to_unit_range(video.detach()) * 255.0).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).cpu().numpy()


def farneback_flow(frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """Dense optical flow ``(H, W, 2)`` (dx, dy in pixels) from RGB uint8 ``frame0`` to ``frame1``.

    A pixel ``(x, y)`` of ``frame0`` moves to ``(x + dx, y + dy)`` in ``frame1``.
    """
    cv2 = require_cv2()
    gray0 = cv2.cvtColor(np.ascontiguousarray(frame0), cv2.COLOR_RGB2GRAY)
    gray1 = cv2.cvtColor(np.ascontiguousarray(frame1), cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(gray0, gray1, None, **_FARNEBACK)


FLOW_CACHE_BYTES = 512 * 2**20
"""Memory for the Farneback flows of recent videos (per process; see :func:`video_flows`)."""


class _FlowCache:
    """Flows of the last few videos, keyed by their exact bytes (shape + BLAKE2b digest).

    One sample's videos are scored by several metrics and systems (the source by
    ``motion_epe`` of every system and by the identity's ``warp_error``; each edit by its
    ``warp_error`` and ``motion_epe``), so each video's flow is computed once instead of up to
    five times. The key is the content, so a hit returns exactly what recomputing would.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[tuple[Any, ...], list[np.ndarray]] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[Any, ...]) -> list[np.ndarray] | None:
        flows = self._entries.get(key)
        if flows is not None:
            self._entries.move_to_end(key)
        return flows

    def put(self, key: tuple[Any, ...], flows: list[np.ndarray]) -> None:
        size = sum(f.nbytes for f in flows)
        if size > self.budget or key in self._entries:
            return
        while self._entries and self._bytes + size > self.budget:
            _, old = self._entries.popitem(last=False)
            self._bytes -= sum(f.nbytes for f in old)
        self._entries[key] = flows
        self._bytes += size

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


_FLOWS = _FlowCache(FLOW_CACHE_BYTES)


def video_flows(frames: np.ndarray) -> Sequence[np.ndarray]:
    """Farneback flows of consecutive frames: uint8 ``(T, H, W, 3)`` -> ``T - 1`` arrays
    ``(H, W, 2)`` float32 (see :func:`farneback_flow`).

    Recent videos' flows are kept (``FLOW_CACHE_BYTES`` per process, keyed by the frames'
    bytes), so scoring the same video again costs one hash. A video whose flows alone exceed
    the budget is not kept: its flows are computed pair by pair as they are read.
    """
    frames = np.ascontiguousarray(frames)
    t, h, w = frames.shape[:3]
    pairs = max(t - 1, 0)
    if pairs * h * w * 2 * 4 > _FLOWS.budget:
        return _LazyFlows(frames)
    key = (frames.shape, hashlib.blake2b(frames.data, digest_size=16).digest())
    flows = _FLOWS.get(key)
    if flows is None:
        flows = [farneback_flow(frames[j], frames[j + 1]) for j in range(pairs)]
        for flow in flows:
            flow.flags.writeable = False  # shared by every later caller
        _FLOWS.put(key, flows)
    return flows


class _LazyFlows(Sequence[np.ndarray]):
    """The flows of a video too large to keep, computed when indexed (nothing is stored)."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return max(self.frames.shape[0] - 1, 0)

    def __getitem__(self, j: Any) -> Any:
        if not isinstance(j, int) or not 0 <= j < len(self):
            raise IndexError(j)
        return farneback_flow(self.frames[j], self.frames[j + 1])


class TemporalConsistency(EditMetric):
    """Warp error of the edited video (lower is better).

    For each consecutive pair, Farneback flow ``f`` from frame t to t+1 of the edit; frame t+1
    is warped back to t by bilinear sampling at ``p + f(p)`` (``cv2.remap``);
    ``error = mean |frame_t - warp(frame_t+1)|`` on [0, 1] data over the channels and the
    pixels whose sampling point falls inside the frame, pooled over all pairs of the sample.
    Range [0, 1]; a static video scores ~0, flicker scores high. Clips with one frame are
    excluded. Occlusions are not masked out, so fast motion inflates the error a little.
    Flows come from :func:`video_flows` (computed once per video and reused).
    """

    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        require_cv2()
        super().__init__(**kwargs)

    def _score(self, edit: Tensor, **_: Any) -> Tensor:
        cv2 = require_cv2()
        frames = _to_uint8_frames(edit)
        b, t, h, w, _c = frames.shape
        grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        scores = torch.full((b,), math.nan, dtype=torch.float64)
        if t < 2:
            return scores
        for i in range(b):
            err_sum, n_valid = 0.0, 0
            flows = video_flows(frames[i])
            for j in range(t - 1):
                flow = flows[j]
                map_x = grid_x + flow[..., 0]
                map_y = grid_y + flow[..., 1]
                valid = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
                nxt = frames[i, j + 1].astype(np.float32) / 255.0
                warped = cv2.remap(nxt, map_x, map_y, cv2.INTER_LINEAR)
                diff = np.abs(frames[i, j].astype(np.float32) / 255.0 - warped)
                err_sum += float(diff[valid].sum())
                n_valid += int(valid.sum()) * 3
            if n_valid > 0:
                scores[i] = err_sum / n_valid
        return scores


class MotionFidelity(EditMetric):
    """Mean end-point error between the source's and the edit's optical flow (lower is better).

    For each consecutive pair, Farneback flows ``f_src`` and ``f_edit``;
    ``EPE = mean ||f_src - f_edit||_2`` in pixels at the evaluated resolution, averaged over
    pixels and pairs of the sample. With ``outside_mask=True`` pixels are weighted by
    ``1 - max(m_t, m_t+1)`` so that motion inside the edited region (an added or removed
    object) is not penalised; samples whose mask covers everything are then excluded.
    Range [0, inf) pixels; 0 when the edit moves exactly like the source. Clips with one frame
    are excluded. Farneback is unreliable on textureless regions, where both flows are noise.
    Flows come from :func:`video_flows` (computed once per video and reused).
    """

    higher_is_better = False

    def __init__(self, outside_mask: bool = False, **kwargs: Any) -> None:
        require_cv2()
        super().__init__(**kwargs)
        self.outside_mask = outside_mask
        self.requires = ("source", "mask") if outside_mask else ("source",)

    def _score(
        self, edit: Tensor, *, source: Tensor | None, mask: Tensor | None, **_: Any
    ) -> Tensor:
        assert source is not None
        frames_e = _to_uint8_frames(edit)
        frames_s = _to_uint8_frames(source)
        b, t = frames_e.shape[:2]
        weights = None
        if self.outside_mask:
            assert mask is not None
            keep = 1.0 - torch.maximum(mask[:, 0, :-1], mask[:, 0, 1:])  # (B, T-1, H, W)
            weights = keep.double().cpu().numpy()
        scores = torch.full((b,), math.nan, dtype=torch.float64)
        if t < 2:
            return scores
        for i in range(b):
            epe_sum, weight_sum = 0.0, 0.0
            flows_s, flows_e = video_flows(frames_s[i]), video_flows(frames_e[i])
            for j in range(t - 1):
                f_src, f_edit = flows_s[j], flows_e[j]
                epe = np.linalg.norm(f_src.astype(np.float64) - f_edit, axis=-1)
                if weights is None:
                    epe_sum += float(epe.sum())
                    weight_sum += epe.size
                else:
                    epe_sum += float((epe * weights[i, j]).sum())
                    weight_sum += float(weights[i, j].sum())
            if weight_sum > 0:
                scores[i] = epe_sum / weight_sum
        return scores


def _setting(obj: Any, key: str) -> Any:
    """Read ``key`` from a processor size setting (a dict in older transformers, else an object)."""
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


class _ImagePreprocess:
    """Resize / centre-crop / normalise frames in torch, following a HF image processor's settings.

    Frames are ``(N, 3, H, W)`` float in [0, 1]; the result is the model's ``pixel_values``.
    Doing this in torch keeps frames on their device (no PIL round trip per frame).
    """

    def __init__(self, processor: Any) -> None:
        size = getattr(processor, "size", None)
        crop = getattr(processor, "crop_size", None)
        self.do_resize = bool(getattr(processor, "do_resize", True)) and size is not None
        self.shortest_edge = _setting(size, "shortest_edge")
        self.resize_hw = (_setting(size, "height"), _setting(size, "width"))
        self.crop_hw = None
        if getattr(processor, "do_center_crop", False) and crop is not None:
            self.crop_hw = (_setting(crop, "height"), _setting(crop, "width"))
        self.mode = "bilinear" if int(getattr(processor, "resample", 3)) == 2 else "bicubic"
        self.do_normalize = bool(getattr(processor, "do_normalize", True))
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, frames: Tensor) -> Tensor:
        if self.do_resize:
            h, w = frames.shape[-2:]
            if self.shortest_edge:
                short, long = min(h, w), max(h, w)
                new_long = int(self.shortest_edge * long / short)
                size = (self.shortest_edge, new_long) if h <= w else (new_long, self.shortest_edge)
            else:
                size = self.resize_hw
            frames = F.interpolate(frames, size=size, mode=self.mode, antialias=True)
            frames = frames.clamp(0.0, 1.0)
        if self.crop_hw is not None:
            ch, cw = self.crop_hw
            h, w = frames.shape[-2:]
            top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
            frames = frames[..., top : top + ch, left : left + cw]
        if self.do_normalize:
            frames = (frames - self.mean.to(frames.device)) / self.std.to(frames.device)
        return frames


def _model_load_error(kind: str, path: str, err: Exception) -> ValueError:
    return ValueError(
        f"could not load the {kind} model from {path!r}: {err}. Pass a local directory written "
        "by save_pretrained (config.json, weights, and the processor / tokenizer files)"
    )


class _FrameEncoder:
    """A frozen HF vision model (CLIP or DINO) held outside the metric's module tree.

    Kept out of ``nn.Module`` registration so that metric state dicts and Lightning checkpoints
    do not carry the encoder weights; it follows the input's device lazily.
    """

    def __init__(self, kind: str, path: str, batch_size: int) -> None:
        self.kind = kind
        self.batch_size = batch_size
        self.tokenizer: Any = None
        try:
            if kind == "CLIP":
                from transformers import CLIPModel, CLIPProcessor

                self.model = CLIPModel.from_pretrained(path, local_files_only=True)
                processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
                self.tokenizer = processor.tokenizer
                image_processor = processor.image_processor
            else:
                from transformers import AutoImageProcessor, AutoModel

                self.model = AutoModel.from_pretrained(path, local_files_only=True)
                image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise _model_load_error(kind, path, err) from err
        self.model.eval().requires_grad_(False)
        self.preprocess = _ImagePreprocess(image_processor)

    def _device(self, device: torch.device) -> None:
        if next(self.model.parameters()).device != device:
            self.model.to(device)

    @staticmethod
    def _features(out: Any) -> Tensor:
        if isinstance(out, Tensor):
            return out
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    @torch.no_grad()
    def embed_frames(self, video: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` in [-1, 1] -> L2-normalised embeddings ``(B, T, D)``."""
        self._device(video.device)
        b, c, t, h, w = video.shape
        frames = to_unit_range(video).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        chunks = []
        for start in range(0, b * t, self.batch_size):
            pixels = self.preprocess(frames[start : start + self.batch_size])
            if self.kind == "CLIP":
                out = self.model.get_image_features(pixel_values=pixels)
            else:
                out = self.model(pixel_values=pixels)
            chunks.append(self._features(out).float())
        return F.normalize(torch.cat(chunks), dim=-1).reshape(b, t, -1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], device: torch.device) -> Tensor:
        """``list[str]`` -> L2-normalised CLIP text embeddings ``(B, D)``."""
        self._device(device)
        max_len = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        ).to(device)
        out = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return F.normalize(self._features(out).float(), dim=-1)


@functools.lru_cache(maxsize=4)
def _load_encoder(kind: str, path: str, batch_size: int) -> _FrameEncoder:
    """One encoder per (kind, path, batch size), so CLIP text and frame metrics share weights."""
    return _FrameEncoder(kind, path, batch_size)


def _consecutive_cosine(embeddings: Tensor) -> Tensor:
    """``(B, T, D)`` normalised -> mean cosine of consecutive frames ``(B,)``; NaN if T < 2."""
    if embeddings.shape[1] < 2:
        return torch.full((embeddings.shape[0],), math.nan, dtype=torch.float64)
    cos = (embeddings[:, :-1] * embeddings[:, 1:]).sum(dim=-1)
    return cos.mean(dim=1).double().cpu()


class ClipTextAlignment(EditMetric):
    """CLIP text-frame alignment: ``100 * mean_t cos(E_img(frame_t), E_txt(text))``.

    ``texts`` should describe the edited result (target caption, else the instruction).
    Range [-100, 100], typically 20-35 for matching pairs with ViT-B CLIP. Rewards the edit's
    content matching the words; blind to temporal artefacts and to what should have stayed.
    """

    higher_is_better = True
    requires = ("texts",)

    def __init__(self, model_path: str, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = _load_encoder("CLIP", str(model_path), batch_size)

    def _score(self, edit: Tensor, *, texts: Sequence[str] | None, **_: Any) -> Tensor:
        assert texts is not None
        images = self._encoder.embed_frames(edit)  # (B, T, D)
        text = self._encoder.embed_texts(texts, edit.device)  # (B, D)
        cos = (images * text[:, None]).sum(dim=-1)
        return (100.0 * cos.mean(dim=1)).double().cpu()


class ClipFrameConsistency(EditMetric):
    """CLIP frame consistency: mean cosine similarity of consecutive frames' CLIP image embeddings.

    Range [-1, 1], ~0.9-1.0 for real videos; 1-frame clips are excluded. Rewards a stable look;
    a frozen (static) video scores a perfect 1.
    """

    higher_is_better = True

    def __init__(self, model_path: str, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = _load_encoder("CLIP", str(model_path), batch_size)

    def _score(self, edit: Tensor, **_: Any) -> Tensor:
        return _consecutive_cosine(self._encoder.embed_frames(edit))


class DinoFrameConsistency(EditMetric):
    """DINO(v2) frame consistency: mean cosine similarity of consecutive frames' DINO embeddings.

    The embedding is the model's pooled output (the normalised CLS token for DINOv2). Range
    [-1, 1]; 1-frame clips are excluded. More sensitive to object identity than CLIP; a frozen
    video also scores 1.
    """

    higher_is_better = True

    def __init__(self, model_path: str, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = _load_encoder("DINO", str(model_path), batch_size)

    def _score(self, edit: Tensor, **_: Any) -> Tensor:
        return _consecutive_cosine(self._encoder.embed_frames(edit))


METRIC_CLASSES: dict[str, type[EditMetric]] = {
    "psnr": EditPSNR,
    "ssim": EditSSIM,
    "edit_region_psnr": EditRegionPSNR,
    "preservation_psnr": PreservationPSNR,
    "warp_error": TemporalConsistency,
    "motion_epe": MotionFidelity,
    "clip_text": ClipTextAlignment,
    "clip_frame": ClipFrameConsistency,
    "dino_frame": DinoFrameConsistency,
}
"""The names ``build_metrics`` uses, mapped to their classes (``results.json`` keys)."""


MetricFamilyBuilder = Callable[[bool, bool], tuple[dict[str, EditMetric], list[str]]]
"""``build(has_target, has_mask) -> (metrics, notices)`` of a registered metric family."""

_FAMILIES: dict[str, tuple[MetricFamilyBuilder, dict[str, type[EditMetric]]]] = {}


def register_metric_family(
    name: str, build: MetricFamilyBuilder, classes: dict[str, type[EditMetric]]
) -> None:
    """Add a family of metrics that ``build_metrics(..., features=True)`` builds.

    Metric modules built on :class:`EditMetric` cannot be imported from this module without an
    import cycle, so they register themselves; ``sama/evaluation/__init__.py`` imports them
    (``feature_metrics``: the EfficientNet feature-space metrics), so they are registered
    whenever this module is imported. ``classes`` maps the family's ``results.json`` names to
    their classes (for ``metric_directions``).
    """
    _FAMILIES[name] = (build, dict(classes))


def metric_directions() -> dict[str, bool]:
    """``{metric name: higher_is_better}`` for every name ``build_metrics`` can return."""
    classes = dict(METRIC_CLASSES)
    for _, family in _FAMILIES.values():
        classes.update(family)
    return {name: cls.higher_is_better for name, cls in classes.items()}


def build_metrics(
    clip_path: str | None = None,
    dino_path: str | None = None,
    *,
    has_target: bool,
    has_mask: bool,
    features: bool = True,
) -> tuple[dict[str, EditMetric], list[str]]:
    """Build every metric the inputs allow; return them and a notice for each one skipped.

    Args:
        clip_path: local directory of a HF CLIP model + processor (``--clip-path``), or None.
        dino_path: local directory of a HF DINO(v2) model + image processor, or None.
        has_target: the benchmark has ground-truth edits (PSNR / SSIM / edit-region PSNR).
        has_mask: the benchmark has edit-region masks (edit-region / preservation PSNR, and
            motion fidelity restricted to outside the mask).
        features: also build the registered metric families (``register_metric_family``):
            the EfficientNet feature-space metrics ``effnet_frame`` and
            ``effnet_preservation`` of ``sama/evaluation/feature_metrics.py``.

    Returns:
        ``(metrics, notices)``: metrics keyed by the names in ``METRIC_CLASSES``, and one
        human-readable line per metric that was not built, saying why.
    """
    metrics: dict[str, EditMetric] = {}
    notices: list[str] = []
    if has_target:
        metrics["psnr"] = EditPSNR()
        metrics["ssim"] = EditSSIM()
    else:
        notices.append("PSNR / SSIM against the target skipped: the benchmark has no targets")
    if has_target and has_mask:
        metrics["edit_region_psnr"] = EditRegionPSNR()
    else:
        missing = " and ".join(
            n for n, ok in (("targets", has_target), ("masks", has_mask)) if not ok
        )
        notices.append(f"edit-region PSNR skipped: the benchmark has no {missing}")
    if has_mask:
        metrics["preservation_psnr"] = PreservationPSNR()
    else:
        notices.append(
            "preservation PSNR skipped: the benchmark has no masks, so the unedited region "
            "is unknown"
        )
    try:
        require_cv2()
    except ImportError as err:
        notices.append(f"warp error and motion fidelity skipped: {err}")
    else:
        metrics["warp_error"] = TemporalConsistency()
        metrics["motion_epe"] = MotionFidelity(outside_mask=has_mask)
        if not has_mask:
            notices.append("motion fidelity measured over the whole frame: no masks given")
    if clip_path:
        metrics["clip_text"] = ClipTextAlignment(clip_path)
        metrics["clip_frame"] = ClipFrameConsistency(clip_path)
    else:
        notices.append(
            "CLIP text alignment and CLIP frame consistency skipped: no --clip-path given"
        )
    if dino_path:
        metrics["dino_frame"] = DinoFrameConsistency(dino_path)
    else:
        notices.append("DINO frame consistency skipped: no --dino-path given")
    if features:
        for build, _ in _FAMILIES.values():
            built, skipped = build(has_target, has_mask)
            metrics.update(built)
            notices.extend(skipped)
    return metrics, notices
