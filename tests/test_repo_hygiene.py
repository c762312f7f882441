"""No run state in the repository: nothing under runs/, no Lightning checkpoint, no large binary
outside the places meant for them (the shipped weights, the docs' images)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000
#: folders whose files may be large: the shipped editor's weights, the figures of the docs
LARGE_ALLOWED = ("weights/", "docs/images/")


def tracked_files() -> list[str]:
    """Paths tracked by git in this checkout; skips the test outside a git checkout (an sdist)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot list tracked files")
    done = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout (an sdist?): nothing tracked to check")
    return [path for path in done.stdout.split("\0") if path]


def test_no_run_folder_is_tracked() -> None:
    runs = [p for p in tracked_files() if p.startswith(("runs/", "lightning_logs/"))]
    assert runs == [], f"run state is tracked (git rm -r --cached runs): {runs[:5]}"


def test_no_checkpoint_is_tracked() -> None:
    ckpts = [p for p in tracked_files() if p.endswith(".ckpt")]
    assert ckpts == [], f"Lightning checkpoints are tracked: {ckpts[:5]}"


def test_no_large_file_outside_weights_and_doc_images() -> None:
    large = []
    for path in tracked_files():
        file = ROOT / path
        if path.startswith(LARGE_ALLOWED) or not file.is_file():
            continue  # allowed, or deleted in the work tree (git rm pending)
        if file.stat().st_size > MAX_BYTES:
            large.append(f"{path} ({file.stat().st_size / 1e6:.1f} MB)")
    assert large == [], f"files over {MAX_BYTES / 1e6:g} MB outside {LARGE_ALLOWED}: {large}"


def test_run_folders_are_ignored() -> None:
    """A fresh run's state (runs/, lightning_logs/, any .ckpt) never shows up as untracked."""
    tracked_files()  # skips outside a git checkout
    probes = ["runs/x/checkpoints/last.ckpt", "lightning_logs/version_0/x", "some/where.ckpt"]
    done = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", *probes],
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(done.stdout.split()) == sorted(probes), done.stdout + done.stderr
