"""Two-process DDP on CPU (gloo): every rank trains the same task sequence, the sampler's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import sama

from tasks import TaskSampler


def _ddp_override(path: Path, max_steps: int, callbacks: list, **trainer: object) -> Path:
    """A 2-process CPU DDP override of the tiny pre-training config, seed 7, written to
    ``path``; ``trainer`` adds or replaces trainer fields."""
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "strategy": "ddp",
            "max_steps": max_steps,
            "enable_progress_bar": False,
            "logger": False,
            "callbacks": callbacks,
            **trainer,
        },
        "seed_everything": 7,  # the one seed: SamaCLI derives model.seed from it
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_ranks_train_the_same_task_sequence(tmp_path: Path) -> None:
    record = tmp_path / "record"
    recorder = {"class_path": "helpers_data.TaskRecorder", "init_args": {"out_dir": str(record)}}
    override = _ddp_override(tmp_path / "ddp.yaml", 12, [recorder], enable_checkpointing=False)
    sama("fit", "--config=configs/tiny/pretrain.yaml", f"--config={override}", timeout=500)
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == 12
    assert ranks[0] == ranks[1]
    sampler = TaskSampler(
        {
            "reconstruction": 1,
            "cube_inpainting": 2,
            "speed_perturbation": 3,
            "tube_shuffle": 4,
            "semantic_anchoring": 2,
        },
        {
            "reconstruction": "clips",
            "cube_inpainting": "clips",
            "speed_perturbation": "clips",
            "tube_shuffle": "clips",
            "semantic_anchoring": "image_pairs",
        },
        seed=7,
    )
    assert [task for _, task in ranks[0]] == sampler.sequence(0, 12)
    assert len({task for _, task in ranks[0]}) >= 3


@pytest.mark.slow
def test_lora_under_ddp_trains_the_adapters_and_saves_trainable_only(tmp_path: Path) -> None:
    """`model.lora` with 2-process DDP: both ranks train (finite losses), the checkpoint holds
    only LoRA matrices and SAMA's own modules, and the LoRA B matrices left zero."""
    import torch

    out = tmp_path / "out"
    callbacks = [
        {"class_path": "helpers_fsdp.RankRecorder", "init_args": {"out_dir": str(out)}},
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 4, "save_top_k": -1},
        },
    ]
    override = _ddp_override(
        tmp_path / "ddp.yaml",
        4,
        callbacks,
        default_root_dir=str(out / "root"),
        limit_val_batches=0,
    )
    lora = "--model.lora={rank: 4, alpha: 8}"
    sama("fit", "--config=configs/tiny/pretrain.yaml", f"--config={override}", lora, timeout=500)
    for rank in (0, 1):
        lines = (out / f"rank{rank}.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in lines]
        assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    checkpoint = out / "root" / "checkpoints" / "epoch=0-step=4.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    keys = [k for k in state if k.startswith("model.")]
    assert keys and all(
        ".lora_" in k
        or k.split(".")[1] in ("segment_embedding", "siglip_feat_mlp", "semantic_head")
        for k in keys
    )
    lora_b = [v for k, v in state.items() if ".lora_B." in k]
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b)
