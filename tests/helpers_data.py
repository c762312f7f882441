"""Tiny in-memory datasets for the task/module/CLI tests (same item format as the real ones).

Videos are smooth random fields: low-resolution noise upsampled trilinearly to
``(3, T, H, W)`` in [-1, 1], seeded per item, so every item is deterministic and cheap.
Use them as ``clips`` / ``video_pairs`` / ``image_pairs`` of ``datamodules.SamaDataModule``, or
call :func:`clip_batch` / :func:`pair_batch` for a ready batch dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import Dataset

from datamodules import SamaDataModule

CAPTIONS = ("a red ball rolls to the left", "", "waves under a grey sky", "a cat walks")
INSTRUCTIONS = ("Make the ball blue", "Remove the cat", "Turn the sky orange")


def smooth_video(frames: int, size: tuple[int, int], seed: int) -> Tensor:
    """A deterministic smooth video ``(3, frames, H, W)`` in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, max(frames // 2, 1), 4, 4, generator=generator)
    video = F.interpolate(coarse, size=(frames, *size), mode="trilinear", align_corners=True)
    return torch.tanh(video[0])


class SmoothClips(Dataset):
    """``num`` clips: ``{"video": (3, T, H, W), "caption": str, "path": str}``."""

    def __init__(
        self, num: int = 8, frames: int = 9, size: tuple[int, int] = (32, 32), seed: int = 0
    ) -> None:
        self.num, self.frames, self.size, self.seed = num, frames, tuple(size), seed

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict:
        return {
            "video": smooth_video(self.frames, self.size, self.seed * 10_000 + index),
            "caption": CAPTIONS[index % len(CAPTIONS)],
            "path": f"smooth://{self.seed}/{index}",
        }


class SmoothPairs(Dataset):
    """``num`` edit pairs (``frames=1``: image pairs); the target is a colour-shifted source
    inside a box, which is also the pair's ``mask``."""

    def __init__(
        self, num: int = 8, frames: int = 9, size: tuple[int, int] = (32, 32), seed: int = 0
    ) -> None:
        self.num, self.frames, self.size, self.seed = num, frames, tuple(size), seed

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict:
        source = smooth_video(self.frames, self.size, self.seed * 10_000 + 5_000 + index)
        mask = torch.zeros(1, *source.shape[1:])
        h, w = self.size
        mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
        shift = torch.tensor([0.5, -0.5, 0.25]).view(3, 1, 1, 1)
        target = (source + shift * mask).clamp(-1, 1)
        return {
            "source": source,
            "target": target,
            "mask": mask,
            "instruction": INSTRUCTIONS[index % len(INSTRUCTIONS)],
            "id": f"pair-{self.seed}-{index}",
            "category": "swap",
        }


def clip_batch(batch: int = 2, frames: int = 9, size: tuple[int, int] = (32, 32)) -> dict:
    """A ``clips`` batch: ``{"video": (B, 3, T, H, W), "caption": [...]}``."""
    items = [SmoothClips(batch, frames, size)[i] for i in range(batch)]
    return {
        "video": torch.stack([item["video"] for item in items]),
        "caption": [item["caption"] for item in items],
    }


def pair_batch(batch: int = 2, frames: int = 9, size: tuple[int, int] = (32, 32)) -> dict:
    """A ``video_pairs`` (``frames > 1``) or ``image_pairs`` (``frames == 1``) batch."""
    items = [SmoothPairs(batch, frames, size)[i] for i in range(batch)]
    out = {key: torch.stack([item[key] for item in items]) for key in ("source", "target", "mask")}
    for key in ("instruction", "id", "category"):
        out[key] = [item[key] for item in items]
    return out


def tiny_model_config(
    tasks: list[dict] | None = None, text: str = "random", **overrides: object
) -> dict:
    """The ``model`` section of a tiny config: PixelCodec(4) (48 latent channels), a 2-layer
    width-32 Wan with patch (1, 1, 1), RandomTextEncoder (dim 32; ``text="minilm"`` for the real
    MiniLM, dim 384) and PooledPixelSemanticEncoder (dim 16)."""
    text_encoder = (
        {
            "class_path": "sama.encoders.RandomTextEncoder",
            "init_args": {"dim": 32, "max_length": 16},
        }
        if text == "random"
        else {"class_path": "sama.encoders.MiniLMTextEncoder", "init_args": {"max_length": 16}}
    )
    config = {
        "codec": {"class_path": "sama.encoders.PixelCodec", "init_args": {"spatial_factor": 4}},
        "text_encoder": text_encoder,
        "semantic_encoder": {
            "class_path": "sama.encoders.PooledPixelSemanticEncoder",
            "init_args": {"dim": 16, "grid": 2},
        },
        "model": {
            "semantic_hidden": 32,
            "wan_config": {
                "patch_size": [1, 1, 1],
                "num_attention_heads": 2,
                "attention_head_dim": 16,
                "in_channels": 48,
                "out_channels": 48,
                "text_dim": 32 if text == "random" else 384,
                "freq_dim": 16,
                "ffn_dim": 64,
                "num_layers": 2,
                "cross_attn_norm": True,
                "qk_norm": "rms_norm_across_heads",
                "eps": 1e-6,
                "rope_max_seq_len": 32,
            },
        },
        "tasks": tasks
        or [
            {"class_path": "tasks.Reconstruction"},
            {"class_path": "tasks.CubeInpainting"},
            {"class_path": "tasks.SpeedPerturbation"},
            {"class_path": "tasks.TubeShuffle"},
            {"class_path": "tasks.SemanticAnchoring", "init_args": {"weight": 2}},
        ],
        "lr": 1e-3,
    }
    config.update(overrides)
    return config


class TaskRecorder(Callback):
    """Writes ``[(global_step, task), ...]`` of every training batch to ``<out_dir>/rank<r>.json``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.seen: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen.append((trainer.global_step, batch["task"]))

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.seen))


def tiny_datamodule(frames: int = 5, size: tuple[int, int] = (16, 16)) -> SamaDataModule:
    """The module tests' data: 8 smooth clips and 8 one-frame smooth pairs, batch 2."""
    return SamaDataModule(
        clips=[SmoothClips(8, frames, size)],
        image_pairs=[SmoothPairs(8, 1, size)],
        batch_size=2,
        val_batches_per_task=1,
    )


def tiny_trainer(tmp_path: Path, max_steps: int, **kwargs: object) -> pl.Trainer:
    """A quiet CPU trainer for ``max_steps`` (no logger, no bars, no validation unless asked)."""
    options = {"limit_val_batches": 0, **kwargs}
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **options,
    )
