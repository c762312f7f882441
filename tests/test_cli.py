"""The `sama` command: subcommand dispatch, `sama tasks`, and real `sama fit` runs of the tiny
configs (stage 0, then stage 1 from its checkpoint)."""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sama import cli
from sama.model import SamaTransformer
from sama.module import SamaModule

ROOT = Path(__file__).resolve().parents[1]


def sama(*args: str, extra_path: str | None = None, timeout: int = 240) -> tuple[str, float]:
    """Run ``python -m sama ARGS`` in the project root; returns (output, wall seconds)."""
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests")] + ([extra_path] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sama", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr, wall


def scalars(log_dir: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sama fit --config configs/tiny/pretrain.yaml --trainer.max_steps=20`` into a temp dir."""
    out = tmp_path_factory.mktemp("runs")
    sama(
        "fit",
        "--config=configs/tiny/pretrain.yaml",
        "--trainer.max_steps=20",
        "--trainer.val_check_interval=10",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={out}",
        "--data.init_args.val_batches_per_task=1",
    )
    return out / "pretrain"


def test_tiny_pretrain_trains_with_finite_losses_on_every_task(pretrain_run: Path) -> None:
    losses = scalars(pretrain_run, "train/loss")
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses)
    events = EventAccumulator(str(pretrain_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for task in ("reconstruction", "cube_inpainting", "speed_perturbation", "tube_shuffle"):
        assert f"val/{task}/fm_loss" in tags
    assert "val/loss" in tags and "val/semantic_anchoring/sem_loss" in tags
    assert (pretrain_run / "checkpoints" / "last.ckpt").is_file()
    assert (pretrain_run / "config.yaml").is_file()


def test_cli_checkpoint_reloads_with_its_encoders(pretrain_run: Path) -> None:
    path = pretrain_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert all(key.startswith("model.") for key in checkpoint["state_dict"])  # no encoders
    module = SamaModule.load_from_checkpoint(path)
    assert type(module.encoders.text).__name__ == "MiniLMTextEncoder"
    assert module.task_sampler.weights["tube_shuffle"] == 4.0
    assert sum(module.task_counts.values()) == 20

    dim = module.encoders.semantic.dim  # the CPU default: EfficientNet-Lite0, 320
    assert type(module.encoders.semantic).__name__ == "EfficientNetSemanticEncoder" and dim == 320
    reference = SamaTransformer(module.model.wan_config, semantic_dim=dim, semantic_hidden=128)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items()}
    reference.load_state_dict(state)
    x = torch.randn(1, 48, 3, 8, 8)
    text, mask = module.encoders.text.encode(["[Video edit] Make the ball blue"])
    tokens = torch.randn(1, 65, dim)
    t = torch.tensor([700.0])
    module.eval()
    with torch.no_grad():
        got = module.model(x, t, text, source_latents=x, semantic_tokens=tokens, text_mask=mask)
        want = reference(x, t, text, source_latents=x, semantic_tokens=tokens, text_mask=mask)
    torch.testing.assert_close(got.velocity, want.velocity, rtol=0, atol=0)
    torch.testing.assert_close(got.semantic, want.semantic, rtol=0, atol=0)


def test_tiny_sft_starts_from_the_stage0_checkpoint(pretrain_run: Path, tmp_path: Path) -> None:
    stage0 = pretrain_run / "checkpoints" / "last.ckpt"
    # the model section as `sama fit` resolves it (configs/tiny/sft.yaml includes _parts/)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        cli.SamaCLI(args=["fit", f"--config={ROOT / 'configs/tiny/sft.yaml'}", "--print_config"])
    config = yaml.safe_load(printed.getvalue())["model"]
    assert config["init_from"] == "runs/tiny/pretrain/checkpoints/last.ckpt"
    module = SamaModule.from_config({**config, "init_from": str(stage0)})
    module.setup("fit")
    saved = torch.load(stage0, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, saved[f"model.{key}"])

    sama(
        "fit",
        "--config=configs/tiny/sft.yaml",
        f"--model.init_from={stage0}",
        "--trainer.max_steps=4",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    assert math.isfinite(scalars(tmp_path / "sft", "train/loss")[-1])
    assert (tmp_path / "sft" / "checkpoints" / "last.ckpt").is_file()


def test_sama_tasks_lists_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.strip().splitlines()
    assert header.split()[:4] == ["name", "stream", "weight", "origin"]
    listed = {row.split()[0]: row.split() for row in rows}
    for name, stream, weight in [
        ("reconstruction", "clips", "1"),
        ("cube_inpainting", "clips", "2"),
        ("speed_perturbation", "clips", "3"),
        ("tube_shuffle", "clips", "4"),
        ("semantic_anchoring", "image_pairs", "1"),
        ("instruction_editing", "video_pairs", "1"),
    ]:
        assert listed[name][1:4] == [stream, weight, "built-in"]


def test_help_lists_lightning_and_extra_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", *cli.EXTRA_COMMANDS):
        assert command in out
    assert "List the registered training tasks" in out


def test_extra_commands_are_dispatched_before_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str]] = []

    def hello(argv: list[str]) -> int:
        received.append(argv)
        return 3

    monkeypatch.setitem(cli.EXTRA_COMMANDS, "hello", (hello, "say hello"))
    assert cli.main(["hello", "--loud", "x"]) == 3
    assert received == [["--loud", "x"]]
    assert "hello" in cli._extra_help() and "say hello" in cli._extra_help()


@pytest.mark.parametrize(
    "text",
    [
        "model:\n  seed: 5\n",
        "model.seed: 5\n",
        "data.init_args.seed: 4\n",
        "data:\n  init_args:\n    seed: 4\n",
    ],
)
def test_a_config_file_setting_a_derived_seed_is_refused(tmp_path: Path, capsys, text: str) -> None:
    # jsonargparse would silently replace these with the value derived from seed_everything
    included = tmp_path / "part.yaml"
    included.write_text(f"config: {ROOT / 'configs/tiny/sft.yaml'}\n{text}")
    run = tmp_path / "run.yaml"
    run.write_text("config: part.yaml\nseed_everything: 3\n")  # the seed set in an included file
    assert cli.main(["fit", f"--config={run}", "--print_config"]) == 2
    err = capsys.readouterr().err
    assert "part.yaml: sets" in err and "set seed_everything instead" in err
    assert len(err.strip().splitlines()) == 1
