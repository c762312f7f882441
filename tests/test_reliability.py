"""Trusted loading, preemption-safe runs, one run per folder, outputs that never lie.

Run as a user would: ``python -m sama`` subprocesses on the tiny configs, real files, real
signals. The fits are marked ``slow``; the rest are quick.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_runs import Payload, recorded

from sama.checkpoint_io import (
    CorruptCheckpointError,
    SafeCheckpointIO,
    UntrustedCheckpointError,
    load_checkpoint_file,
)
from sama.io import write_video
from sama.run_dir import RunDirError, check_run_dir, lock_run_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = "--config=configs/tiny/pretrain.yaml"
QUIET = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run(*args: str, module: str = "sama", timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in the project root (exit status not checked)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if "error" in line.lower()]


def assert_one_line_refusal(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    (line,) = error_lines(done)
    for word in words:
        assert word in line, line
    return line


def fit_args(root: Path, steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        TINY,
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        *QUIET,
        f"--trainer.default_root_dir={root}",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------
# A. trusted loading


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose unpickling creates ``marker``; and the marker path."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {
            "state_dict": {"model.x": torch.zeros(1)},
            "global_step": 0,
            "hyper_parameters": {"lr": 1e-3},
            "payload": Payload(str(marker)),
        },
        path,
    )
    # the premise: an unrestricted load runs the payload
    torch.load(path, weights_only=False)["payload"].close()
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_load_checkpoint_file_refuses_a_pickle_payload(payload: tuple[Path, Path]) -> None:
    path, marker = payload
    with pytest.raises(UntrustedCheckpointError, match="refused") as error:
        load_checkpoint_file(path, what="init_from")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UntrustedCheckpointError):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)  # the caller cannot opt out
    assert not marker.exists()


def test_init_from_refuses_a_pickle_payload_in_process(payload: tuple[Path, Path]) -> None:
    from helpers_data import tiny_model_config

    from sama.module import SamaModule

    path, marker = payload
    module = SamaModule.from_config(tiny_model_config(init_from=str(path)))
    with pytest.raises(UntrustedCheckpointError, match="init_from"):
        module.setup("fit")
    assert not marker.exists()


def test_train_tiny_refuses_a_pickle_payload_as_last_ckpt(
    payload: tuple[Path, Path], tmp_path: Path
) -> None:
    path, marker = payload
    last = tmp_path / "run" / "pretrain" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    shutil.copy(path, last)
    done = run(
        "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out"), module="sama.train_tiny"
    )
    assert_one_line_refusal(done, "refused", str(last))
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sama_commands_refuse_a_pickle_payload(payload: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = payload
    runs = tmp_path / "runs"
    video = tmp_path / "in.mp4"
    write_video(video, torch.zeros(5, 32, 32, 3, dtype=torch.uint8), 8.0)
    cases = {
        "init_from": fit_args(runs / "a", 2, f"--model.init_from={path}"),
        "fit --ckpt_path": fit_args(runs / "b", 2, f"--ckpt_path={path}"),
        "test --ckpt_path": ["test", "--config=configs/eval/synthedit.yaml", f"--ckpt_path={path}"],
        "predict --ckpt_path": [
            "predict",
            "--config=configs/eval/synthedit.yaml",
            f"--ckpt_path={path}",
        ],
        "validate --ckpt_path": [
            "validate",
            "--config=configs/tiny/pretrain.yaml",
            f"--ckpt_path={path}",
        ],
        "edit --checkpoint": [
            "edit",
            f"--checkpoint={path}",
            f"--video={video}",
            "--instruction=make it blue",
            f"--output={tmp_path / 'edit' / 'out.mp4'}",
        ],
    }
    for case, args in cases.items():
        done = run(*args)
        line = assert_one_line_refusal(done, "refused", str(path))
        assert not marker.exists(), case
        assert "could run code" in line, (case, line)


def test_a_real_fit_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    """What a fit saves is weights-only loadable (hyper_parameters are plain data)."""
    from helpers_data import SmoothClips, SmoothPairs, tiny_model_config
    from lightning.pytorch import Trainer

    from datamodules import SamaDataModule
    from sama.module import SamaModule

    module = SamaModule.from_config(tiny_model_config())
    data = SamaDataModule(
        clips=[SmoothClips(8, 5, (16, 16))], image_pairs=[SmoothPairs(8, 1, (16, 16))], batch_size=2
    )
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        plugins=[SafeCheckpointIO()],
    )
    trainer.fit(module, datamodule=data)
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    checkpoint = load_checkpoint_file(ckpt)
    assert checkpoint["global_step"] == 2 and "hyper_parameters" in checkpoint
    assert ckpt.stat().st_mode & 0o777 != 0o600  # not the private mode of a temp file
    SamaModule.load_from_checkpoint(ckpt, weights_only=True)


# ---------------------------------------------------------------------------------------------
# B. atomic checkpoint writes, corrupt checkpoints


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def disk_full(obj: object, target: str) -> None:
        with open(target, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint_file(path)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left


@pytest.mark.slow
def test_a_kill_during_checkpoint_writes_never_leaves_a_half_written_ckpt(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    script = (
        "import itertools, torch\n"
        "from sama.checkpoint_io import SafeCheckpointIO\n"
        "io = SafeCheckpointIO()\n"
        "for step in itertools.count():\n"
        f"    io.save_checkpoint({{'global_step': step, 'w': torch.randn(1_000_000)}}, {str(path)!r})\n"
        "    print(step, flush=True)\n"
    )
    for delay in (0.05, 0.37, 0.71):
        writer = subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True
        )
        writer.stdout.readline()  # one checkpoint written
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        checkpoint = load_checkpoint_file(path)
        assert checkpoint["w"].shape == (1_000_000,)
        assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]


def test_a_corrupt_checkpoint_names_the_last_good_one(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    io = SafeCheckpointIO()
    io.save_checkpoint({"global_step": 500, "w": torch.ones(2)}, folder / "step=500.ckpt")
    io.save_checkpoint({"global_step": 900, "w": torch.ones(2)}, folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated by a copy
    with pytest.raises(CorruptCheckpointError) as error:
        io.load_checkpoint(folder / "last.ckpt")
    message = str(error.value)
    assert "truncated or corrupt" in message and "\n" not in message
    assert f"--ckpt_path {folder / 'step=500.ckpt'}" in message
    (folder / "step=500.ckpt").write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="no other checkpoint in its folder loads"):
        load_checkpoint_file(folder / "last.ckpt")


# ---------------------------------------------------------------------------------------------
# C. one run per folder


def test_a_live_run_dir_lock_is_refused_and_freed_when_its_holder_dies(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from sama.run_dir import lock_run_dir; lock_run_dir({str(folder)!r}); "
            "print('locked', flush=True); import time; time.sleep(60)",
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by a running fit \\(pid {holder.pid}\\)"):
            lock_run_dir(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = lock_run_dir(folder)  # the kernel dropped the dead holder's lock
    assert (folder / ".lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_an_earlier_run_is_refused_unless_resumed(tmp_path: Path) -> None:
    run_dir = tmp_path / "pretrain"
    ckpts = run_dir / "checkpoints"
    check_run_dir(run_dir, ckpts, None, ["fit"])  # empty: fine
    ckpts.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("x: 1\n")
    (ckpts / "last.ckpt").write_bytes(b"x")
    argv = ["fit", "--config=c.yaml", "--ckpt_path", "/elsewhere/a.ckpt"]
    with pytest.raises(RunDirError) as error:
        check_run_dir(run_dir, ckpts, "/elsewhere/a.ckpt", argv)
    message = str(error.value)
    assert "sama fit --config=c.yaml --ckpt_path=last" in message and "/elsewhere" not in message
    assert f"rm -r {run_dir}" in message and "\n" not in message
    with pytest.raises(RunDirError):
        check_run_dir(run_dir, ckpts, None, ["fit"])
    check_run_dir(run_dir, ckpts, "last", ["fit"])
    check_run_dir(run_dir, ckpts, str(ckpts / "last.ckpt"), ["fit"])


# ---------------------------------------------------------------------------------------------
# B + C with real fits and real signals


STEPS = 8


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The per-step losses of an uninterrupted tiny fit of STEPS steps."""
    root = tmp_path_factory.mktemp("reference")
    losses = root / "losses.jsonl"
    done = run(*fit_args(root, STEPS, *_recorder(losses)))
    assert done.returncode == 0, done.stderr[-3000:]
    return {line["step"]: line["loss"] for line in recorded(losses)}


def _recorder(path: Path) -> list[str]:
    return ["--trainer.callbacks+=helpers_runs.LossRecorder", f"--trainer.callbacks.path={path}"]


def _interrupt(root: Path, sig: signal.Signals, after: int = 2) -> subprocess.CompletedProcess:
    """Start a tiny fit into ``root``; send ``sig`` once ``after`` steps were recorded."""
    losses = root / "losses.jsonl"
    args = fit_args(root, STEPS, *_recorder(losses))
    process = subprocess.Popen(
        [sys.executable, "-m", "sama", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while len(recorded(losses)) < after and process.poll() is None:
        assert time.monotonic() < deadline, "the fit did not start training"
        time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=240)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_current_step_and_the_resume_is_bit_identical(
    sig: signal.Signals, reference_losses: dict[int, float], tmp_path: Path
) -> None:
    stopped = _interrupt(tmp_path, sig)
    assert stopped.returncode == 128 + sig, stopped.stderr[-3000:]  # never 0: not finished
    assert f"stopped by {sig.name}" in stopped.stderr
    ckpts = tmp_path / "pretrain" / "checkpoints"
    saved = load_checkpoint_file(ckpts / "last.ckpt")
    before = recorded(tmp_path / "losses.jsonl")
    assert 2 <= saved["global_step"] < STEPS
    assert saved["global_step"] == before[-1]["step"]  # the step in flight finished and was saved

    if sig == signal.SIGTERM:
        # a plain re-run into the folder is refused with the command to resume
        again = run(*fit_args(tmp_path, STEPS))
        line = assert_one_line_refusal(again, "already holds an earlier run", "--ckpt_path=last")
        assert "rm -r" in line

    resumed = run(
        *fit_args(tmp_path, STEPS, *_recorder(tmp_path / "losses.jsonl"), "--ckpt_path=last")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = [
        line for line in recorded(tmp_path / "losses.jsonl") if line["step"] > saved["global_step"]
    ]
    assert [line["step"] for line in after] == list(range(saved["global_step"] + 1, STEPS + 1))
    for line in before + after:
        assert line["loss"] == reference_losses[line["step"]], line  # bit-identical
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    assert load_checkpoint_file(ckpts / "last.ckpt")["global_step"] == STEPS

    if sig == signal.SIGTERM:
        # a truncated last.ckpt: one line naming the last good checkpoint of the folder
        shutil.copy(ckpts / "last.ckpt", ckpts / "good.ckpt")
        os.utime(ckpts / "good.ckpt", (1, 1))
        data = (ckpts / "last.ckpt").read_bytes()
        (ckpts / "last.ckpt").write_bytes(data[: len(data) // 3])
        broken = run(*fit_args(tmp_path, STEPS + 1, f"--ckpt_path={ckpts / 'last.ckpt'}"))
        assert_one_line_refusal(broken, "truncated or corrupt", str(ckpts / "good.ckpt"))


@pytest.mark.slow
def test_a_second_fit_into_a_live_run_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from sama.run_dir import lock_run_dir; lock_run_dir({str(tmp_path / 'pretrain')!r}); "
            "print('locked', flush=True); import time; time.sleep(300)",
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = run(*fit_args(tmp_path, 2))
        assert_one_line_refusal(done, f"in use by a running fit (pid {holder.pid})")
        assert not (tmp_path / "pretrain" / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# ---------------------------------------------------------------------------------------------
# C + D: default_root_dir moves every output; broken files are summarised with no callback


@pytest.mark.slow
def test_default_root_dir_moves_all_outputs_and_broken_files_are_summarised(
    tmp_path: Path,
) -> None:
    clips = tmp_path / "clips"
    rng = np.random.default_rng(0)
    write_video(clips / "good.mp4", rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), 8.0)
    (clips / "broken.mp4").write_bytes(b"\x00not a video" * 40)
    elsewhere = tmp_path / "elsewhere"
    override = tmp_path / "override.yaml"
    override.write_text(
        "trainer:\n"
        "  logger:\n"
        "    class_path: lightning.pytorch.loggers.TensorBoardLogger\n"
        f"    init_args: {{save_dir: {elsewhere}, name: pretrain, version: ''}}\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {elsewhere / 'ckpts'}, save_last: true}}\n"
        "data:\n"
        "  init_args:\n"
        "    clips:\n"
        "      - class_path: datamodules.VideoClips\n"
        f"        init_args: {{paths: [{clips}], frames: 9, size: [32, 32]}}\n"
        "    max_broken_fraction: 0.9\n"
    )
    root = tmp_path / "root"
    done = run(*fit_args(root, 4, f"--config={override}"))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = root / "pretrain"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "hparams.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not elsewhere.exists()
    # the summary at the end of the fit, with no BrokenFileReport in the config
    assert "broken files: 1 file(s)" in done.stderr
    assert str(clips / "broken.mp4") in done.stderr.split("broken files:")[-1]
    listing = (run_dir / "broken_files.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listing] == [str(clips / "broken.mp4")]


# ---------------------------------------------------------------------------------------------
# E. sama edit arguments


def test_sama_edit_refuses_non_positive_frames(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from sama.pipeline import edit_main

    video = tmp_path / "in.mp4"
    write_video(video, np.zeros((5, 32, 32, 3), np.uint8), 8.0)
    argv = ["--checkpoint", str(ROOT / "weights" / "tiny-editor"), "--video", str(video)]
    argv += ["--instruction", "make it red", "--output", str(tmp_path / "out.mp4"), "--steps", "1"]
    assert edit_main([*argv, "--frames", "-3"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert "--frames -3" in line and not (tmp_path / "out.mp4").exists()


def test_sama_edit_oversized_input_suggests_a_smaller_size(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from sama.pipeline import edit_main

    video = tmp_path / "big.mp4"
    write_video(video, np.zeros((1, 512, 512, 3), np.uint8), 8.0)
    argv = ["--checkpoint", str(ROOT / "weights" / "tiny-editor"), "--video", str(video)]
    argv += ["--instruction", "make it red", "--output", str(tmp_path / "out.mp4"), "--steps", "1"]
    assert edit_main(argv) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert "--size" in line and "Wan config" not in line, line
