"""FSDP2 (SamaFSDPStrategy) on CPU with gloo, 2 processes, the tiny pre-training config:
the same losses as DDP and as one process with the same global batch, sharded + full checkpoints with the sharded EMA, an exact resume,
and a consolidated checkpoint that `sama edit` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import sama

from sama import cli
from sama.fsdp import consolidate_checkpoint
from sama.io import read_video, write_video
from sama.module import SamaModule

STEPS = 20
#: DDP all-reduces the gradients, FSDP2 reduce-scatters them (and clips with a DTensor norm):
#: the same sums in another order, so the per-rank losses agree to float32 rounding.
LOSS_TOLERANCE = 1e-5  # measured: 2.4e-7 max over 2 ranks x 20 steps
#: One process with the global batch (8) against the mean of the 2 ranks' losses (4 each): the
#: same samples, corruptions and noise (seeded per global slot), the batch mean taken in two
#: halves and the gradients summed in another order.
SINGLE_TOLERANCE = 1e-5  # measured: 2.4e-7 max over 20 steps


def _override(
    path: Path, out: Path, strategy: object, max_steps: int, devices: int = 2, **extra: object
) -> Path:
    callbacks = [{"class_path": "helpers_fsdp.RankRecorder", "init_args": {"out_dir": str(out)}}]
    callbacks += extra.pop("callbacks", [])
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
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
    # 2 ranks x 4 train as 1 process x 8: the same loss trajectory
    single = tmp_path / "single"
    override = _override(tmp_path / "s.yaml", single, "auto", STEPS, devices=1)
    sama("fit", config, f"--config={override}", "--data.init_args.batch_size=8", timeout=500)
    one = _records(single, 0)
    assert len(one) == STEPS
    assert [r["task"] for r in one] == [r["task"] for r in _records(fsdp, 0)]
    for step, (a, b, c) in enumerate(zip(one, _records(fsdp, 0), _records(fsdp, 1), strict=True)):
        mean = (b["loss"] + c["loss"]) / 2
        assert a["loss"] == pytest.approx(mean, abs=SINGLE_TOLERANCE), (step, a, b, c)
    sharded = ckpt / "epoch=0-step=10.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2
    # consolidated in one process: the EMA (gathered shards) as state_dict, the raw beside it
    consolidated = consolidate_checkpoint(ckpt / "epoch=0-step=20.ckpt", tmp_path / "c.ckpt")
    merged = torch.load(consolidated, map_location="cpu", weights_only=True)
    ema_shards = [torch.load(fsdp / f"rank{rank}_ema.pt") for rank in (0, 1)]
    for name in ema_shards[0]:
        gathered = torch.cat([ema_shards[0][name], ema_shards[1][name]], dim=0)
        torch.testing.assert_close(merged["state_dict"][name], gathered, rtol=0, atol=0)
    assert merged["current_model_state"].keys() == merged["state_dict"].keys()
    loaded = SamaModule.load_from_checkpoint(consolidated)
    assert sum(loaded.task_counts.values()) == STEPS

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


def test_wan14b_configs_use_fsdp2_and_the_sharded_ema(capsys: pytest.CaptureFixture[str]) -> None:
    from test_configs import parsed

    root = Path(__file__).resolve().parents[1] / "configs" / "wan2.1-14b"
    for name in ("pretrain.yaml", "sft.yaml", "sft-lora.yaml"):
        config = parsed(root / name, capsys=capsys)
        trainer = config["trainer"]
        assert trainer["strategy"]["class_path"] == "sama.fsdp.SamaFSDPStrategy"
        callbacks = {c["class_path"]: c for c in trainer["callbacks"]}
        assert callbacks["callbacks.ema.ShardedEMA"]["init_args"]["decay"] == 0.9998
        assert "lightning.pytorch.callbacks.EMAWeightAveraging" not in callbacks
        lora = config["model"].get("lora")
        if name == "sft-lora.yaml":
            assert lora["rank"] == 16 and "ffn.net.2" in lora["target_modules"]
        else:
            assert lora is None


@pytest.fixture
def one_rank_group():
    """A 1-process gloo group and 1-D CPU mesh (torch.distributed needs one for DTensor)."""
    import socket

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_sharding_keeps_outputs_and_the_ema_runs_on_local_shards(one_rank_group) -> None:
    import copy

    from torch import nn
    from torch.distributed.tensor import DTensor

    from callbacks.ema import ShardedEMA
    from sama.fsdp import shard_sama_module
    from sama.model import SamaTransformer, tiny_wan_config

    holder = nn.Module()
    holder.model = SamaTransformer(tiny_wan_config(), semantic_dim=16, semantic_hidden=32)
    reference = copy.deepcopy(holder.model)
    shard_sama_module(holder, one_rank_group)
    assert all(isinstance(p, DTensor) for p in holder.parameters())
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 5, 32, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        torch.testing.assert_close(
            holder.model(x, t, text).velocity, reference(x, t, text).velocity, rtol=0, atol=0
        )

    ema = ShardedEMA(decay=0.5)
    ema._build(holder)
    first = {k: v.clone() for k, v in ema.ema_tensors.items()}
    assert all(not isinstance(v, DTensor) for v in first.values())
    ema.update()  # the first update copies
    with torch.no_grad():
        for p in holder.parameters():
            p.to_local().add_(1.0)
    ema.update()
    for name, value in ema.ema_tensors.items():
        torch.testing.assert_close(value, first[name] + 0.5, rtol=1e-6, atol=1e-6)
    ema.swap()  # the local shards now hold the EMA
    for name, p in holder.named_parameters():
        torch.testing.assert_close(p.to_local(), first[name] + 0.5, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_lora_under_fsdp2_resumes_from_sharded_and_saves_trainable_only(tmp_path: Path) -> None:
    config = "--config=configs/tiny/pretrain.yaml"
    lora = "--model.lora={rank: 4, alpha: 8}"
    saver = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 3, "save_top_k": -1},
    }
    first = tmp_path / "first"
    override = _override(
        tmp_path / "a.yaml", first, _fsdp(True), 6, callbacks=[EMA], checkpoints=[saver]
    )
    sama("fit", config, f"--config={override}", lora, timeout=500)
    sharded = first / "root" / "checkpoints" / "epoch=0-step=3.ckpt"
    assert sharded.is_dir()

    second = tmp_path / "second"
    override = _override(
        tmp_path / "b.yaml", second, _fsdp(False), 6, callbacks=[EMA], checkpoints=[saver]
    )
    sama("fit", config, f"--config={override}", lora, f"--ckpt_path={sharded}", timeout=500)
    for rank in (0, 1):
        assert _records(second, rank) == _records(first, rank)[3:]
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _records(first, rank))
    full = torch.load(second / "root" / "checkpoints" / "epoch=0-step=6.ckpt", weights_only=True)
    keys = [k for k in full["state_dict"] if k.startswith("model.")]
    assert keys and all(
        ".lora_" in k
        or k.split(".")[1] in ("segment_embedding", "siglip_feat_mlp", "semantic_head")
        for k in keys
    )
    assert full["sama_lora"]["rank"] == 4


def test_consolidate_refuses_what_is_not_a_sharded_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a sharded checkpoint folder"):
        consolidate_checkpoint(tmp_path, tmp_path / "out.ckpt")


@pytest.mark.slow
def test_hybrid_shard_and_cpu_offload_train_as_full_shard(tmp_path: Path) -> None:
    """HYBRID_SHARD (2 replica groups of 1 rank: the all-reduce path across groups) and CPU
    offload give full shard's per-rank losses; a hybrid-sharded checkpoint folder consolidates to
    the same weights as the full-shard run's."""
    config = "--config=configs/tiny/pretrain.yaml"
    steps = 6
    saver = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": steps, "save_top_k": -1},
    }
    runs = {
        "full": {},
        "hybrid": {"sharding_strategy": "HYBRID_SHARD", "hybrid_shard_size": 1},
        "offload": {"cpu_offload": True},
    }
    for name, options in runs.items():
        strategy = _fsdp(True)
        strategy["init_args"].update(options)
        override = _override(
            tmp_path / f"{name}.yaml", tmp_path / name, strategy, steps, checkpoints=[saver]
        )
        sama("fit", config, f"--config={override}", timeout=500)
    for name in ("hybrid", "offload"):
        for rank in (0, 1):
            got, want = _records(tmp_path / name, rank), _records(tmp_path / "full", rank)
            assert len(got) == steps
            for a, b in zip(got, want, strict=True):
                assert a["task"] == b["task"]
                assert a["loss"] == pytest.approx(b["loss"], abs=LOSS_TOLERANCE), (name, a, b)
    merged = {}
    for name in ("full", "hybrid", "offload"):
        folder = tmp_path / name / "root" / "checkpoints" / f"epoch=0-step={steps}.ckpt"
        out = consolidate_checkpoint(folder, tmp_path / f"{name}.ckpt")
        merged[name] = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    for name in ("hybrid", "offload"):
        assert merged[name].keys() == merged["full"].keys()
        for key, value in merged["full"].items():
            torch.testing.assert_close(merged[name][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_fsdp_options_are_checked_in_one_line() -> None:
    from sama.fsdp import SamaFSDPStrategy

    with pytest.raises(ValueError, match="sharding_strategy must be one of"):
        SamaFSDPStrategy(sharding_strategy="SHARD_GRAD_OP")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hybrid_shard_size is the ranks per group"):
        SamaFSDPStrategy(hybrid_shard_size=2)
