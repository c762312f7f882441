"""EditPipeline on tiny models: bucketing, restoration, determinism, files, the one sampling
path (predict_step == pipeline), semantic token counts from the semantic encoder."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers_data import SmoothPairs, pair_batch, tiny_model_config

from datamodules import SamaDataModule
from sama.encoders import PixelCodec, RandomTextEncoder
from sama.export import EDIT_PREFIX, InferenceInfo
from sama.flow import SamplingSettings
from sama.io import read_video, write_video
from sama.model import SamaTransformer, tiny_wan_config
from sama.module import SamaModule
from sama.pipeline import EditPipeline, bucket_shape
from sama.seeds import stable_seed

FRAMES, SIZE = 5, (16, 16)


def _pipeline(anchor_frames: int = 1, tokens_per_frame: int = 5) -> EditPipeline:
    config = tiny_wan_config(in_channels=48, text_dim=32, patch_size=(1, 1, 1))
    model = SamaTransformer(config, semantic_dim=16, semantic_hidden=16)
    inference = InferenceInfo(
        anchor_frames=anchor_frames, semantic_tokens_per_frame=tokens_per_frame
    )
    return EditPipeline(model, PixelCodec(spatial_factor=4), RandomTextEncoder(dim=32), inference)


def _grid4_module(**overrides: object) -> SamaModule:
    """A tiny module whose semantic encoder has grid 4: 17 tokens per anchor frame."""
    config = tiny_model_config(
        tasks=[{"class_path": "tasks.InstructionEditing", "init_args": {"stream": "image_pairs"}}],
        semantic_encoder={
            "class_path": "sama.encoders.PooledPixelSemanticEncoder",
            "init_args": {"dim": 16, "grid": 4},
        },
        sample_steps=2,
        guidance_scale=3.0,
        **overrides,
    )
    return SamaModule.from_config(config)


def _record_semantic_tokens(model: SamaTransformer) -> list[int]:
    """Patch ``model.forward`` to record the semantic token count of each call."""
    seen: list[int] = []
    forward = model.forward

    def spy(*args, semantic_tokens=None, **kwargs):
        seen.append(0 if semantic_tokens is None else semantic_tokens.shape[1])
        return forward(*args, semantic_tokens=semantic_tokens, **kwargs)

    model.forward = spy
    return seen


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


def test_settings_and_keyword_overrides() -> None:
    pipe = _pipeline()
    clip = _clip()
    settings = SamplingSettings(steps=2, guidance=3.0, seed=3)
    a = pipe(clip, "make it red", settings=settings, progress=False)
    b = pipe(clip, "make it red", steps=2, guidance=3.0, seed=3, progress=False)
    c = pipe(clip, "make it red", settings=settings, seed=4, progress=False)
    assert torch.equal(a.video, b.video)
    assert not torch.equal(a.video, c.video)


def test_edit_tensor_batches_and_checks_its_input() -> None:
    pipe = _pipeline()
    g = torch.Generator().manual_seed(0)
    source = torch.rand(2, 3, FRAMES, *SIZE, generator=g) * 2 - 1
    settings = SamplingSettings(steps=2)
    out = pipe.edit_tensor(source, [EDIT_PREFIX + "a", EDIT_PREFIX + "b"], settings)
    assert out.shape == source.shape and out.abs().max() <= 1
    # without a generator the noise comes from settings.seed (0) on the pipeline's device
    seeded = torch.Generator().manual_seed(0)
    again = pipe.edit_tensor(source, [EDIT_PREFIX + "a", EDIT_PREFIX + "b"], settings, seeded)
    assert torch.equal(out, again)
    longer = pipe.edit_tensor(source, ["a", "b"], settings, output_shape=(9, 16, 16))
    assert longer.shape == (2, 3, 9, 16, 16)
    with pytest.raises(ValueError, match="1 prompts for a batch of 2"):
        pipe.edit_tensor(source, ["a"], settings)
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe.edit_tensor(source, ["a", "b"], settings, output_shape=(5, 18, 16))


def test_semantic_token_count_comes_from_the_semantic_encoder(tmp_path: Path) -> None:
    # PooledPixelSemanticEncoder(grid=4): 4*4 + 1 = 17 tokens per anchor frame (not 65)
    module = _grid4_module(anchor_frames=2)
    assert module.encoders.semantic.tokens_per_frame == 17
    pipe = EditPipeline.from_module(module)
    seen = _record_semantic_tokens(pipe.model)
    pipe(_clip(), "make it red", steps=1, progress=False)
    assert seen and set(seen) == {2 * 17}
    # and an export records the count for the pipeline that reads it
    loaded = EditPipeline.from_export(module.export(tmp_path / "export"))
    assert loaded.inference.semantic_tokens_per_frame == 17
    assert loaded.inference.anchor_frames == 2
    seen = _record_semantic_tokens(loaded.model)
    loaded(_clip(), "make it red", steps=1, progress=False)
    assert set(seen) == {2 * 17}


def test_no_semantic_tokens_when_trained_without_semantic_anchoring() -> None:
    pipe = EditPipeline.from_module(_grid4_module(semantic_weight=0.0))
    assert pipe.inference.anchor_frames == 0
    seen = _record_semantic_tokens(pipe.model)
    pipe(_clip(), "x", steps=1, progress=False)
    assert set(seen) == {0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SamaModule, Path, Path]:
    """A tiny grid-4 module after 2 training steps, its Lightning checkpoint and its export."""
    tmp = tmp_path_factory.mktemp("trained")
    module = _grid4_module()
    trainer = pl.Trainer(
        default_root_dir=tmp,
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    data = SamaDataModule(image_pairs=[SmoothPairs(4, 1, SIZE)], batch_size=2)
    trainer.fit(module, data)
    ckpt = tmp / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return module, ckpt, module.export(tmp / "export")


def test_predict_step_and_the_pipeline_give_identical_edits(
    trained: tuple[SamaModule, Path, Path],
) -> None:
    module, ckpt, export = trained
    module.eval()
    batch = {**pair_batch(2, FRAMES, SIZE), "task": "instruction_editing"}
    predicted = module.predict_step(batch, 3)
    video = predicted["video"]
    assert video.shape == (2, 3, FRAMES, *SIZE) and predicted["task"] == "instruction_editing"
    assert predicted["instructions"] == [EDIT_PREFIX + t for t in batch["instruction"]]
    # the documented seed of batch 3 of dataloader 0, with the module's sampler settings
    expected_settings = SamplingSettings(steps=2, guidance=3.0, seed=stable_seed(0, 0, 3))
    for pipe in (EditPipeline.from_checkpoint(ckpt), EditPipeline.from_checkpoint(export)):
        assert pipe.settings == expected_settings.updated(seed=0)
        assert pipe.inference.semantic_tokens == 17
        edit = pipe.edit_tensor(batch["source"], predicted["instructions"], expected_settings)
        assert torch.equal(edit, video)
    other = module.predict_step(batch, 4)["video"]
    assert not torch.equal(other, video)


def test_checkpoint_loading_reads_no_training_code(
    trained: tuple[SamaModule, Path, Path],
) -> None:
    import subprocess
    import sys

    _, ckpt, export = trained
    code = (
        "import sys\n"
        "from sama.pipeline import EditPipeline\n"
        f"EditPipeline.from_checkpoint({str(ckpt)!r})\n"
        f"EditPipeline.from_checkpoint({str(export)!r})\n"
        "bad = [m for m in sys.modules if m == 'sama.module' or m.split('.')[0] in "
        "('tasks', 'datamodules')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
