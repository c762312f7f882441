"""EditPipeline on tiny models: bucketing, restoration, determinism, files."""

from __future__ import annotations

import pytest
import torch

from sama.encoders import PixelCodec, RandomTextEncoder
from sama.io import read_video, write_video
from sama.model import SamaTransformer, tiny_wan_config
from sama.pipeline import EditPipeline, bucket_shape


def _pipeline(anchor_frames: int = 1) -> EditPipeline:
    config = tiny_wan_config(in_channels=48, text_dim=32, patch_size=(1, 1, 1))
    model = SamaTransformer(config, semantic_dim=16, semantic_hidden=16)
    return EditPipeline(
        model, PixelCodec(spatial_factor=4), RandomTextEncoder(dim=32), anchor_frames=anchor_frames
    )


def _clip(frames: int = 6, height: int = 18, width: int = 22) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (frames, height, width, 3), generator=g, dtype=torch.uint8)


def test_bucket_shape_snaps_frames_and_size() -> None:
    assert bucket_shape(10, 30, 41, temporal_factor=4, spatial_unit=8) == (9, (32, 40))
    assert bucket_shape(10, 30, 41, temporal_factor=4, spatial_unit=8, max_frames=6) == (
        5,
        (32, 40),
    )
    assert bucket_shape(3, 5, 5, temporal_factor=1, spatial_unit=8) == (3, (8, 8))
    with pytest.raises(ValueError, match="multiples of 8"):
        bucket_shape(9, 32, 32, temporal_factor=4, spatial_unit=8, size=(30, 32))


def test_edit_restores_size_and_is_deterministic() -> None:
    pipe = _pipeline()
    clip = _clip()
    a = pipe(clip, "make it red", steps=2, seed=3, fps=12.0, progress=False)
    b = pipe(clip, "make it red", steps=2, seed=3, fps=12.0, progress=False)
    c = pipe(clip, "make it red", steps=2, seed=4, fps=12.0, progress=False)
    assert a.video.shape == (6, 18, 22, 3) and a.video.dtype == torch.uint8
    assert a.model_size == (20, 24) and a.fps == 12.0
    assert torch.equal(a.video, b.video)
    assert not torch.equal(a.video, c.video)


def test_guidance_and_no_semantic_paths_run() -> None:
    pipe = _pipeline(anchor_frames=0)
    out = pipe(_clip(), "x", steps=2, guidance=3.0, source_guidance=1.5, progress=False)
    assert out.video.shape == (6, 18, 22, 3)


def test_edit_file_refuses_to_overwrite(tmp_path) -> None:
    src = tmp_path / "in.mp4"
    write_video(src, _clip(5, 16, 16), fps=10)
    out = tmp_path / "out.mp4"
    pipe = _pipeline()
    pipe.edit_file(src, "make it blue", out, steps=1, progress=False)
    frames, fps = read_video(out)
    assert frames.shape == (5, 16, 16, 3) and fps == pytest.approx(10)
    with pytest.raises(FileExistsError, match="--overwrite"):
        pipe.edit_file(src, "make it blue", out, steps=1, progress=False)


def test_edit_manifest_skips_finished_outputs(tmp_path) -> None:
    write_video(tmp_path / "a.mp4", _clip(5, 16, 16), fps=10)
    (tmp_path / "m.jsonl").write_text(
        '{"id": "a", "source": "a.mp4", "instruction": "x"}\n'
        '{"id": "b", "source": "a.mp4", "instruction": "y"}\n'
    )
    pipe = _pipeline()
    calls = []
    paths = pipe.edit_manifest(
        tmp_path / "m.jsonl",
        tmp_path / "out",
        steps=1,
        on_result=lambda e, r: calls.append(e["id"]),
    )
    assert [p.name for p in paths] == ["a.mp4", "b.mp4"] and calls == ["a", "b"]
    pipe.edit_manifest(
        tmp_path / "m.jsonl",
        tmp_path / "out",
        steps=1,
        on_result=lambda e, r: calls.append(e["id"]),
    )
    assert calls == ["a", "b"]


def test_edit_cli_refuses_existing_output_and_bad_input(tmp_path, capsys) -> None:
    from sama.pipeline import edit_main

    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    code = edit_main(
        [
            "--checkpoint",
            str(tmp_path),
            "--video",
            "x.mp4",
            "--instruction",
            "y",
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--overwrite" in err and "\n" not in err
    assert out.read_bytes() == b"keep me"
    (tmp_path / "bad.mp4").write_text("not a video")
    code = edit_main(
        [
            "--checkpoint",
            str(tmp_path),
            "--video",
            str(tmp_path / "bad.mp4"),
            "--instruction",
            "y",
            "--output",
            str(tmp_path / "new.mp4"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bad.mp4" in err and "\n" not in err
    assert not (tmp_path / "new.mp4").exists()
