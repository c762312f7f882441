"""results.json, report.html, the resumable results log and the image helpers."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from sama.evaluation.html import write_report
from sama.evaluation.results import PARTIAL_FILENAME, ResultsLog, write_results
from sama.files import sha256_file, verify_checksums
from sama.images import edit_overview, encode_png, frame_strip, write_png

NOTICE = "CLIP text alignment skipped: no --clip-path given"


def make_records() -> list[dict]:
    """Two categories, three systems; one missing and one NaN value."""
    rows = [
        ("a", "swap", "model", 20.0, 0.01),
        ("b", "swap", "model", 30.0, None),
        ("c", "style", "model", 25.0, 0.03),
        ("a", "swap", "identity", 10.0, 0.0),
        ("b", "swap", "identity", 12.0, 0.0),
        ("c", "style", "identity", float("nan"), 0.0),
        ("a", "swap", "oracle", 100.0, 0.02),
    ]
    return [
        {
            "id": sample_id,
            "category": category,
            "system": system,
            "instruction": f"edit {sample_id}",
            "metrics": {"psnr": psnr, "warp_error": warp},
            "paths": {"edit": Path("edits") / f"{sample_id}.mp4"},
        }
        for sample_id, category, system, psnr, warp in rows
    ]


def test_results_json_structure_and_means(tmp_path: Path) -> None:
    path = write_results(
        tmp_path,
        make_records(),
        config={"steps": 8, "manifest": Path("bench/manifest.jsonl")},
        checkpoint_hash="abc123",
        notices=[NOTICE],
    )
    results = json.loads(path.read_text())
    assert path == tmp_path / "results.json"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left
    assert results["systems"] == ["model", "identity", "oracle"]
    assert set(results["baselines"]) == {"identity", "oracle"}
    assert results["checkpoint_sha256"] == "abc123"
    assert results["config"]["manifest"] == "bench/manifest.jsonl"
    assert results["notices"] == [NOTICE]
    assert results["metrics"] == {
        "psnr": {"higher_is_better": True},
        "warp_error": {"higher_is_better": False},
    }
    assert results["categories"] == ["style", "swap"]
    swap_model = results["per_category"]["swap"]["model"]
    assert swap_model["count"] == 2
    assert swap_model["metrics"]["psnr"] == {"mean": pytest.approx(25.0), "count": 2}
    assert swap_model["metrics"]["warp_error"] == {"mean": pytest.approx(0.01), "count": 1}
    overall = results["overall"]
    assert overall["model"]["metrics"]["psnr"]["mean"] == pytest.approx(25.0)
    assert overall["identity"]["metrics"]["psnr"] == {"mean": pytest.approx(11.0), "count": 2}
    assert overall["oracle"]["count"] == 1
    assert results["per_category"]["style"]["oracle"]["metrics"]["psnr"]["mean"] is None
    assert len(results["samples"]) == 7
    sample = results["samples"][5]
    assert sample["metrics"]["psnr"] is None and sample["paths"]["edit"] == "edits/c.mp4"


def test_bad_records_are_rejected(tmp_path: Path) -> None:
    records = make_records()
    with pytest.raises(ValueError, match="appears twice"):
        write_results(tmp_path, records + records[:1], config={}, checkpoint_hash=None, notices=[])
    with pytest.raises(ValueError, match="no 'id'"):
        write_results(tmp_path, [{"metrics": {}}], config={}, checkpoint_hash=None, notices=[])


def _thumbnails(tmp_path: Path) -> dict[str, dict[str, Path]]:
    rng = np.random.default_rng(0)
    thumbs = {}
    for sample_id in ("a", "c"):
        roles = {}
        for role in ("source", "edit", "target"):
            clip = rng.integers(0, 256, (5, 8, 10, 3), dtype=np.uint8)
            roles[role] = write_png(
                tmp_path / "thumbs" / f"{sample_id}_{role}.png", frame_strip(clip)
            )
        thumbs[sample_id] = roles
    return thumbs


def test_report_is_self_contained(tmp_path: Path) -> None:
    results = write_results(
        tmp_path, make_records(), config={}, checkpoint_hash="abc123", notices=[NOTICE]
    )
    path = write_report(tmp_path, results, thumbnails=_thumbnails(tmp_path))
    page = path.read_text()
    assert path == tmp_path / "report.html"
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == 2 + 6  # two metric plots, three strips for two samples
    assert NOTICE in page and "class=notices" in page
    for text in ("<h3>swap</h3>", "<h3>style</h3>", "identity", "oracle", "edit a", "abc123"):
        assert text in page


def test_report_without_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    results = write_results(tmp_path, make_records(), config={}, checkpoint_hash=None, notices=[])
    page = write_report(tmp_path, results, thumbnails=None).read_text()
    assert "plots skipped: matplotlib is missing" in page
    assert "<img" not in page


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder for the filter-0 RGB PNGs that encode_png writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    raw = np.frombuffer(zlib.decompress(data[start : start + length]), np.uint8)
    rows = raw.reshape(height, 1 + width * 3)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_png_round_trip_and_frame_strip() -> None:
    video = np.stack([np.full((6, 5, 3), 10 * t, np.uint8) for t in range(10)])
    strip = frame_strip(video, n=4, gap=2)
    assert strip.shape == (6, 4 * 5 + 3 * 2, 3)
    assert [strip[0, k * 7, 0] for k in range(4)] == [0, 30, 60, 90]  # frames 0, 3, 6, 9
    assert (strip[:, 5:7] == 255).all()
    assert frame_strip(video[:2], n=4).shape == (6, 2 * 5 + 2, 3)
    image = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decode_png(encode_png(image)), image)
    with pytest.raises(ValueError, match="uint8"):
        frame_strip(video.astype(np.float32))


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert sha256_file(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_results_log_resumes_after_a_torn_write(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path)
    log.append({"id": "a", "metrics": {"psnr": 20.0}})
    log.append({"id": "b", "system": "identity", "metrics": {"psnr": float("nan")}})
    with open(tmp_path / PARTIAL_FILENAME, "a") as handle:
        handle.write('{"id": "c", "metr')  # the process died mid-line
    resumed = ResultsLog(tmp_path)
    assert resumed.done_ids() == {"a", "b"}
    assert resumed.done_ids("model") == {"a"}
    resumed.append({"id": "c", "metrics": {"psnr": 25.0}})
    records = resumed.records()
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert records[1]["metrics"]["psnr"] is None
    assert not math.isnan(records[2]["metrics"]["psnr"])
    results = write_results(tmp_path, records, config={}, checkpoint_hash=None, notices=[])
    assert json.loads(results.read_text())["overall"]["model"]["metrics"]["psnr"]["mean"] == 22.5


def test_edit_overview_lays_out_source_edit_target_rows() -> None:
    video = np.zeros((5, 8, 10, 3), np.uint8)
    edit = np.full((5, 8, 10, 3), 200, np.uint8)
    image = edit_overview([("recolor", video, edit, video), ("no target", video, edit, None)])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # 3 strips of 3 frames (10 px + 2 px gaps) + 2 spacers of 4 px, upscaled 4x
    assert image.shape[1] == 4 * (3 * (3 * 10 + 2 * 2) + 2 * 4)
    assert (image == 200).all(axis=2).any() and (image == 0).all(axis=2).any()
    with pytest.raises(ValueError, match="different sizes"):
        edit_overview([("bad", video, edit[:, :4], video)])
    with pytest.raises(ValueError, match="at least one row"):
        edit_overview([])


def test_verify_checksums_names_the_changed_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"weights")
    (tmp_path / "SHA256SUMS").write_text(f"{sha256_file(tmp_path / 'a.bin')}  a.bin\n")
    assert verify_checksums(tmp_path) == ["a.bin"]
    (tmp_path / "a.bin").write_bytes(b"changed")
    with pytest.raises(ValueError, match=r"a\.bin: checksum differs"):
        verify_checksums(tmp_path)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(ValueError, match="missing"):
        verify_checksums(tmp_path)
    with pytest.raises(ValueError, match="no checksum list"):
        verify_checksums(tmp_path / "nowhere")
