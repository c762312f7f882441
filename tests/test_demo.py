"""`make demo`'s driver (sama.demo) at a few steps: every stage, the outputs, reuse on a re-run,
and the choice of editor (the shipped export with verified checksums, or the demo's own run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sama import demo
from sama.io import read_video
from sama.module import SamaModule

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--pretrain-steps=2", "--sft-steps=2", "--bench-samples=2", "--sample-steps=2"]
OWN = ["--editor=none", "--real-editor=none"]  # the demo's own run edits everything


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert demo.main([f"--out={out}", *OWN, *FAST]) == 0
    return out


def test_demo_writes_every_output(demo_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (
        "pretrain/checkpoints/last.ckpt",
        "sft/checkpoints/last.ckpt",
        "edits/real_blue_tint.mp4",
        "edits/real_purple_tint.mp4",
        "real-edits.png",
        "bench/results.json",
        "bench/report.html",
        "overview.png",
    ):
        assert (demo_run / path).is_file(), path
    assert list((demo_run / "sft").glob("events.out.tfevents.*"))
    results = json.loads((demo_run / "bench" / "results.json").read_text())
    assert results["config"]["checkpoint"].endswith("sft/checkpoints/last.ckpt")
    edit, _ = read_video(demo_run / "edits" / "real_blue_tint.mp4")
    assert edit.shape == (9, 144, 176, 3)  # restored to the clip's own size
    picture = np.asarray(Image.open(demo_run / "real-edits.png"))
    assert picture.shape[1] > 3 * 3 * 176  # source | edit | target strips of 3 frames each
    # a re-run reuses the trained stages and the real-clip edits
    before = (demo_run / "edits" / "real_blue_tint.mp4").stat().st_mtime_ns
    assert demo.main([f"--out={demo_run}", *OWN, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "stage 0: reusing" in printed and "stage 1: reusing" in printed
    assert "real clip: reusing" in printed and "demo's own stage-1 checkpoint" in printed
    assert (demo_run / "edits" / "real_blue_tint.mp4").stat().st_mtime_ns == before
    assert "not the real-footage editor" in printed


def test_demo_edits_with_a_shipped_export_and_checks_its_checksums(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = SamaModule.load_from_checkpoint(
        str(demo_run / "sft" / "checkpoints" / "last.ckpt"), map_location="cpu"
    )
    shipped = module.export(tmp_path / "editor")
    args = [f"--out={demo_run}", f"--editor={shipped}", f"--real-editor={shipped}", *FAST]
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    assert f"shipped tiny editor {shipped}" in printed
    assert f"shipped real-footage editor {shipped} at 64x80" in printed
    assert "real clip: reusing" not in printed  # another editor: the edits are made again
    results = json.loads((demo_run / "bench" / "results.json").read_text())
    assert results["config"]["checkpoint"] == str(shipped)

    (shipped / "encoders.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"encoders\.json: checksum differs"):
        demo.main(args)
