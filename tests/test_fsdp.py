"""FSDP2 (SamaFSDPStrategy) on CPU with gloo, 2 processes, the tiny pre-training config:
the same losses as DDP, sharded + full checkpoints with the sharded EMA, an exact resume,
and a consolidated checkpoint that `sama edit` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import sama

from sama import cli
from sama.io import read_video, write_video

STEPS = 20
#: DDP all-reduces the gradients, FSDP2 reduce-scatters them (and clips with a DTensor norm):
#: the same sums in another order, so the per-rank losses agree to float32 rounding.
LOSS_TOLERANCE = 1e-5  # measured: 2.4e-7 max over 2 ranks x 20 steps


def _override(path: Path, out: Path, strategy: object, max_steps: int, **extra: object) -> Path:
    callbacks = [{"class_path": "helpers_fsdp.RankRecorder", "init_args": {"out_dir": str(out)}}]
    callbacks += extra.pop("callbacks", [])
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "strategy": strategy,
            "default_root_dir": str(out / "root"),
            "max_steps": max_steps,
            "enable_progress_bar": False,
            "logger": False,
            "val_check_interval": 10,
            "limit_val_batches": 1,
            "enable_checkpointing": bool(extra.get("checkpoints")),
            "callbacks": callbacks + extra.get("checkpoints", []),
        },
        "seed_everything": 7,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _records(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"rank{rank}.jsonl").read_text().splitlines()]


def _fsdp(save_distributed_checkpoint: bool) -> dict:
    return {
        "class_path": "sama.fsdp.SamaFSDPStrategy",
        "init_args": {"save_distributed_checkpoint": save_distributed_checkpoint},
    }


EMA = {"class_path": "callbacks.ema.ShardedEMA", "init_args": {"decay": 0.9}}


@pytest.mark.slow
def test_fsdp2_matches_ddp_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    config = "--config=configs/tiny/pretrain.yaml"
    # 1. DDP reference
    ddp = tmp_path / "ddp"
    sama(
        "fit", config, f"--config={_override(tmp_path / 'a.yaml', ddp, 'ddp', STEPS)}", timeout=500
    )

    # 2. FSDP2 + sharded EMA, sharded checkpoints every 10 steps
    fsdp = tmp_path / "fsdp"
    ckpt = fsdp / "root" / "checkpoints"  # SamaCLI puts checkpoints in the run directory
    saver = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 10, "save_top_k": -1},
    }
    override = _override(
        tmp_path / "b.yaml", fsdp, _fsdp(True), STEPS, callbacks=[EMA], checkpoints=[saver]
    )
    sama("fit", config, f"--config={override}", timeout=500)
    for rank in (0, 1):
        got, want = _records(fsdp, rank), _records(ddp, rank)
        assert len(got) == STEPS
        assert [r["task"] for r in got] == [r["task"] for r in want]
        for a, b in zip(got, want, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], abs=LOSS_TOLERANCE), (rank, a, b)
    assert _records(fsdp, 0) != _records(fsdp, 1)  # the ranks saw different samples
    sharded = ckpt / "epoch=0-step=10.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2

    # 3. resume from the sharded step-10 checkpoint; this run saves a full checkpoint
    resumed = tmp_path / "resumed"
    full_dir = resumed / "root" / "checkpoints"
    override = _override(
        tmp_path / "c.yaml", resumed, _fsdp(False), STEPS, callbacks=[EMA], checkpoints=[saver]
    )
    sama("fit", config, f"--config={override}", f"--ckpt_path={sharded}", timeout=500)
    for rank in (0, 1):
        again = _records(resumed, rank)
        assert [r["step"] for r in again] == list(range(11, STEPS + 1))
        assert again == _records(fsdp, rank)[10:]
        ema_a = torch.load(fsdp / f"rank{rank}_ema.pt")
        ema_b = torch.load(resumed / f"rank{rank}_ema.pt")
        assert ema_a.keys() == ema_b.keys() and ema_a
        for name, value in ema_a.items():
            torch.testing.assert_close(ema_b[name], value, rtol=0, atol=0, msg=name)

    # 4. the full checkpoint: the EMA weights (gathered shards) as state_dict, loadable by edit
    full = full_dir / "epoch=0-step=20.ckpt"
    assert full.is_file()
    checkpoint = torch.load(full, map_location="cpu", weights_only=True)
    shards = [torch.load(resumed / f"rank{rank}_ema.pt") for rank in (0, 1)]
    for name in shards[0]:
        gathered = torch.cat([shards[0][name], shards[1][name]], dim=0)
        torch.testing.assert_close(checkpoint["state_dict"][name], gathered, rtol=0, atol=0)
    assert "current_model_state" in checkpoint

    source = tmp_path / "in.mp4"
    g = torch.Generator().manual_seed(0)
    write_video(source, torch.randint(0, 255, (9, 32, 32, 3), generator=g, dtype=torch.uint8), 8)
    out = tmp_path / "out.mp4"
    args = ["edit", "--checkpoint", str(full), "--video", str(source)]
    args += ["--instruction", "make it blue", "--steps", "2", "--output", str(out)]
    assert cli.main(args) == 0
    frames, _ = read_video(out)
    assert frames.shape == (9, 32, 32, 3)
