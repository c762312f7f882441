"""One clear line for bad input (issue 13): every ``sama`` command prints its errors as one line
``sama <command>: error: ...`` (exit 2); ``--verbose`` / ``SAMA_VERBOSE=1`` shows the traceback;
``sama edit`` refuses an unwritable output or an absent CUDA before loading the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sama.cli
from sama.cli import main
from sama.io import write_video
from sama.pipeline import EditPipeline, edit_main

ROOT = Path(__file__).resolve().parents[1]


def _sama(*args: str, verbose: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAMA_VERBOSE"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if verbose:
        env["SAMA_VERBOSE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "sama", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(done: subprocess.CompletedProcess, command: str) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"sama {command}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def corrupt_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"PK\x03\x04 not a checkpoint at all" * 10)
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    write_video(path, torch.zeros(5, 16, 16, 3, dtype=torch.uint8), 8)
    return path


def test_edit_with_a_corrupt_checkpoint_is_one_line_and_verbose_shows_a_traceback(
    tmp_path: Path, corrupt_ckpt: Path, clip: Path
) -> None:
    args = [
        "edit",
        f"--checkpoint={corrupt_ckpt}",
        f"--video={clip}",
        "--instruction=make it red",
        f"--output={tmp_path / 'out' / 'edit.mp4'}",
        "--device=cpu",
    ]
    line = _one_error_line(_sama(*args), "edit")
    assert str(corrupt_ckpt) in line
    verbose = _sama(*args, verbose=True)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr, verbose.stderr[-3000:]
    flag = _sama(*args, "--verbose")
    assert flag.returncode != 0 and "Traceback" in flag.stderr, flag.stderr[-3000:]


def test_benchmark_with_a_missing_manifest_is_one_line(tmp_path: Path) -> None:
    done = _sama(
        "benchmark",
        "score",
        f"--manifest={tmp_path / 'nope.jsonl'}",
        f"--predictions={tmp_path}",
        f"--output={tmp_path / 'out'}",
    )
    assert "nope.jsonl" in _one_error_line(done, "benchmark score")


def test_main_turns_common_errors_into_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreadable(argv: list[str]) -> int:
        raise PermissionError("[Errno 13] Permission denied: 'data/x.mp4'\nsecond line")

    monkeypatch.delenv("SAMA_VERBOSE", raising=False)
    monkeypatch.setitem(sama.cli.EXTRA_COMMANDS, "synth", (unreadable, "test"))
    assert main(["synth"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sama synth: error: [Errno 13] Permission denied") and "\n" not in err
    monkeypatch.setenv("SAMA_VERBOSE", "1")
    with pytest.raises(PermissionError):
        main(["synth"])


def _no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(EditPipeline, "from_checkpoint", refuse)


def test_edit_refuses_an_unwritable_output_before_loading_the_model(
    tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_model_load(monkeypatch)
    monkeypatch.delenv("SAMA_VERBOSE", raising=False)
    (tmp_path / "afile").write_text("x")
    common = ["--checkpoint=whatever", f"--video={clip}", "--instruction=x", "--device=cpu"]
    assert edit_main([*common, f"--output={tmp_path / 'afile' / 'out.mp4'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sama edit: error: --output") and "is not a folder" in err
    assert "\n" not in err

    def read_only(self: Path, data: bytes) -> int:
        raise PermissionError(13, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)  # a read-only folder, even as root
    assert edit_main([*common, f"--output={tmp_path / 'ro' / 'out.mp4'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not writable (Read-only file system)" in err and "\n" not in err


def test_cuda_on_a_cpu_build_is_one_line(
    tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_model_load(monkeypatch)
    monkeypatch.delenv("SAMA_VERBOSE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    argv = [
        "--checkpoint=whatever",
        f"--video={clip}",
        "--instruction=x",
        f"--output={tmp_path / 'o.mp4'}",
        "--device=cuda",
    ]
    assert edit_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA was asked for but this torch build has no CUDA; use --device cpu" in err
    assert err.startswith("sama edit: error: ") and "\n" not in err
    assert main(["fit", "--trainer.accelerator=gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sama fit: error: --trainer.accelerator gpu: CUDA was asked for")
    assert "\n" not in err
