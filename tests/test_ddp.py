"""Two-process DDP on CPU (gloo): every rank trains the same task sequence, the sampler's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import sama

from tasks import TaskSampler


@pytest.mark.slow
def test_two_ranks_train_the_same_task_sequence(tmp_path: Path) -> None:
    record = tmp_path / "record"
    override = tmp_path / "ddp.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "accelerator": "cpu",
                    "devices": 2,
                    "strategy": "ddp",
                    "max_steps": 12,
                    "enable_progress_bar": False,
                    "logger": False,
                    "enable_checkpointing": False,
                    "callbacks": [
                        {
                            "class_path": "helpers_data.TaskRecorder",
                            "init_args": {"out_dir": str(record)},
                        }
                    ],
                },
                "seed_everything": 7,  # the one seed: SamaCLI derives model.seed from it
            }
        )
    )
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
