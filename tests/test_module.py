"""SamaModule: losses, frozen encoders outside the checkpoint, EMA, init_from, export, reload."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from helpers_data import (
    clip_batch,
    pair_batch,
    tiny_datamodule,
    tiny_model_config,
    tiny_trainer,
)
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from datamodules import SamaDataModule
from sama.encoders import PixelCodec
from sama.module import SamaModule, latent_loss_mask
from tasks import CubeInpainting, EditSample
from tasks.base import split_batch

FRAMES, SIZE = 5, (16, 16)


def _module(**overrides: object) -> SamaModule:
    return SamaModule.from_config(tiny_model_config(**overrides))


def _batch(task: str) -> dict:
    if task == "semantic_anchoring":
        batch = pair_batch(2, 1, SIZE)
    else:
        batch = clip_batch(2, FRAMES, SIZE)
    return {**batch, "task": task}


def _datamodule() -> SamaDataModule:
    return tiny_datamodule(FRAMES, SIZE)


def _trainer(tmp_path, max_steps: int, **kwargs: object) -> pl.Trainer:
    return tiny_trainer(tmp_path, max_steps, **kwargs)


@pytest.mark.parametrize(
    "task", ["reconstruction", "cube_inpainting", "speed_perturbation", "semantic_anchoring"]
)
def test_training_step_gives_finite_loss_and_gradients(task: str) -> None:
    module = _module()
    module.log = lambda *args, **kwargs: None  # no trainer attached
    loss = module.training_step(_batch(task), 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in module.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert module.task_counts[task] == 1


@pytest.mark.parametrize("task", ["cube_inpainting", "speed_perturbation", "semantic_anchoring"])
def test_a_batch_of_two_trains_as_two_ranks_of_one(task: str) -> None:
    """What DDP / FSDP with W ranks of micro-batch B computes equals one process with W * B:
    the same corruption and noise per sample and, the loss being a mean over samples, the mean
    of the ranks' losses and gradients."""
    module = _module()
    batch = {**_batch(task), "index": 5}
    whole, generators = module.prepare_per_sample(module.tasks_by_name[task], batch, (5,))
    assert len(generators) == 2
    loss = sum(
        w * v
        for w, v in zip(
            (1.0, module.semantic_weight), module.compute_losses(whole, generators), strict=True
        )
    )
    loss.backward()
    grad = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    module.zero_grad()
    rank_losses = []
    for rank, one in enumerate(split_batch(batch)):
        part, gens = module.prepare_per_sample(
            module.tasks_by_name[task], one, (5,), rank=rank, world_size=2
        )
        torch.testing.assert_close(part.target, whole.target[rank : rank + 1])
        torch.testing.assert_close(part.source, whole.source[rank : rank + 1])
        fm, sem = module.compute_losses(part, gens)
        rank_loss = fm + module.semantic_weight * sem
        (rank_loss / 2).backward()  # DDP averages the ranks' gradients
        rank_losses.append(rank_loss.detach())
    torch.testing.assert_close(loss.detach(), torch.stack(rank_losses).mean(), rtol=1e-5, atol=1e-6)
    for name, p in module.model.named_parameters():
        if name in grad:
            torch.testing.assert_close(p.grad, grad[name], rtol=1e-4, atol=1e-6, msg=name)
    # another rank layout draws other noise: the global slots, not the batches, are seeded
    swapped, gens = module.prepare_per_sample(
        module.tasks_by_name[task], split_batch(batch)[0], (5,), rank=1, world_size=2
    )
    fm, sem = module.compute_losses(swapped, gens)
    assert (fm + module.semantic_weight * sem).item() != pytest.approx(rank_losses[0].item())


def test_split_batch_slices_samples_and_shares_the_batch_keys() -> None:
    batch = {**clip_batch(3, FRAMES, SIZE), "task": "x", "index": 4, "skipped": [["a", "b"]] * 3}
    parts = split_batch(batch)
    assert len(parts) == 3
    assert all(
        p["task"] == "x" and p["index"] == 4 and p["skipped"] == batch["skipped"] for p in parts
    )
    torch.testing.assert_close(torch.cat([p["video"] for p in parts]), batch["video"])


def test_semantic_weight_zero_never_runs_the_semantic_encoder() -> None:
    module = _module(semantic_weight=0.0)

    def refuse(frames: torch.Tensor) -> torch.Tensor:
        raise AssertionError("semantic encoder ran with semantic_weight=0")

    module.encoders.semantic.encode = refuse
    sample = module.tasks_by_name["tube_shuffle"].prepare(
        clip_batch(2, FRAMES, SIZE), torch.Generator().manual_seed(0)
    )
    fm_loss, sem_loss = module.compute_losses(sample, torch.Generator().manual_seed(0))
    assert torch.isfinite(fm_loss) and sem_loss.item() == 0.0


def test_losses_are_deterministic_under_the_generator_and_depend_on_it() -> None:
    module = _module()
    sample = module.tasks_by_name["reconstruction"].prepare(clip_batch(2, FRAMES, SIZE), None)
    first = module.compute_losses(sample, torch.Generator().manual_seed(3))
    again = module.compute_losses(sample, torch.Generator().manual_seed(3))
    other = module.compute_losses(sample, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_loss_mask_restricts_the_flow_loss() -> None:
    module = _module()
    batch = clip_batch(2, FRAMES, SIZE)
    base = EditSample(None, batch["video"], ["a", "b"], batch["video"][:, :, :1].transpose(1, 2))
    t = torch.full((2,), 0.5)
    full = module.compute_losses(base, torch.Generator().manual_seed(0), t)[0]
    ones = copy.copy(base)
    ones.loss_mask = torch.ones(2, 1, FRAMES, *SIZE)
    same = module.compute_losses(ones, torch.Generator().manual_seed(0), t)[0]
    half = copy.copy(base)
    half.loss_mask = torch.zeros(2, 1, FRAMES, *SIZE)
    half.loss_mask[..., : SIZE[1] // 2] = 1
    masked = module.compute_losses(half, torch.Generator().manual_seed(0), t)[0]
    torch.testing.assert_close(full, same)
    assert not torch.allclose(full, masked)


def test_cube_inpainting_masked_loss_region_sets_the_loss_mask() -> None:
    task = CubeInpainting(loss_region="masked")
    sample = task.prepare(clip_batch(2, FRAMES, SIZE), torch.Generator().manual_seed(0))
    assert sample.loss_mask is not None
    corrupted = (sample.source != sample.target).any(1, keepdim=True)
    assert torch.equal(corrupted, corrupted & sample.loss_mask.bool())


def test_latent_loss_mask_groups_frames_like_the_codec() -> None:
    codec = PixelCodec(spatial_factor=2, temporal_factor=4)
    mask = torch.zeros(1, 1, 9, 4, 4)
    mask[:, :, 0, :2, :2] = 1  # frame 0: its own latent frame, one 2x2 cell
    mask[:, :, 5:9] = 1  # frames 5..8: the whole third latent frame
    latent = latent_loss_mask(mask, codec)
    assert latent.shape == (1, 1, 3, 2, 2)
    assert latent[0, 0, 0, 0, 0] == 1 and latent[0, 0, 0, 1, 1] == 0
    assert latent[0, 0, 1].sum() == 0
    assert torch.all(latent[0, 0, 2] == 1)


def test_size_mismatches_are_clear_errors() -> None:
    config = tiny_model_config()
    config["model"]["wan_config"]["in_channels"] = 16
    with pytest.raises(ValueError, match="latent_channels=48"):
        SamaModule.from_config(config)
    config = tiny_model_config()
    config["model"]["wan_config"]["text_dim"] = 64
    with pytest.raises(ValueError, match="text_encoder.dim=32"):
        SamaModule.from_config(config)


def test_duplicate_task_names_are_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        _module(tasks=[{"class_path": "tasks.TubeShuffle"}, {"class_path": "tasks.TubeShuffle"}])


def test_encoders_stay_out_of_the_state_dict_and_are_shared_by_deepcopy() -> None:
    module = _module(text="minilm")
    keys = list(module.state_dict())
    assert keys and all(key.startswith("model.") for key in keys)
    clone = copy.deepcopy(module)
    assert clone.encoders.text is module.encoders.text
    assert clone.model is not module.model
    assert module.task_sampler.weights == {
        "reconstruction": 1.0,
        "cube_inpainting": 2.0,
        "speed_perturbation": 3.0,
        "tube_shuffle": 4.0,
        "semantic_anchoring": 2.0,
    }


def test_validation_loss_is_fixed_across_calls() -> None:
    module = _module()
    module.log = lambda *args, **kwargs: None
    batch = _batch("cube_inpainting")
    assert torch.equal(module.validation_step(batch, 0), module.validation_step(batch, 0))


def test_checkpoint_reload_gives_identical_outputs_and_ema_weights(tmp_path) -> None:
    module = _module()
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)
    trainer = _trainer(tmp_path, 4, callbacks=[EMAWeightAveraging(decay=0.5), saver])
    trainer.fit(module, _datamodule())
    path = tmp_path / "epoch=0-step=4.ckpt"

    # Saved mid-training: the raw weights and the EMA differ; the EMA is the checkpoint's
    # state_dict, and the module holds it after fit (the callback copies it in at the end).
    checkpoint = torch.load(path, weights_only=False)
    assert all(key.startswith("model.") for key in checkpoint["state_dict"])
    current, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
    assert any(not torch.equal(current[k], averaged[k]) for k in averaged)

    loaded = SamaModule.load_from_checkpoint(path)
    assert loaded.task_counts == module.task_counts and sum(loaded.task_counts.values()) == 4
    torch.manual_seed(0)
    x = torch.randn(1, 48, 2, 2, 2)
    text = torch.randn(1, 4, 32)
    t = torch.tensor([500.0])
    module.eval()
    loaded.eval()
    with torch.no_grad():
        expected = module.model(x, t, text, source_latents=x).velocity
        got = loaded.model(x, t, text, source_latents=x).velocity
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_init_from_a_checkpoint_and_from_an_export(tmp_path) -> None:
    stage0 = _module()
    trainer = _trainer(tmp_path, 2)
    trainer.fit(stage0, _datamodule())
    ckpt = tmp_path / "stage0.ckpt"
    trainer.save_checkpoint(ckpt)
    export = stage0.export(tmp_path / "export")

    for source in (ckpt, export):
        sft = _module(
            tasks=[
                {"class_path": "tasks.InstructionEditing", "init_args": {"stream": "image_pairs"}}
            ],
            init_from=str(source),
        )
        assert not torch.equal(
            sft.model.segment_embedding.weight, stage0.model.segment_embedding.weight
        )
        sft.setup("fit")
        for key, value in stage0.model.state_dict().items():
            torch.testing.assert_close(sft.model.state_dict()[key], value, rtol=0, atol=0)

    with pytest.raises(FileNotFoundError, match="init_from"):
        _module(init_from=str(tmp_path / "missing.ckpt")).setup("fit")


# export format tests: tests/test_export.py; predict_step == EditPipeline: tests/test_pipeline.py


def test_predict_step_generates_the_target_shape_deterministically() -> None:
    module = _module(
        tasks=[{"class_path": "tasks.InstructionEditing"}], sample_steps=2, guidance_scale=3.0
    )
    module.eval()
    batch = {**pair_batch(2, FRAMES, SIZE), "task": "instruction_editing"}
    first = module.predict_step(batch, 0)
    again = module.predict_step(batch, 0)
    assert first["video"].shape == (2, 3, FRAMES, *SIZE)
    assert torch.isfinite(first["video"]).all() and first["video"].abs().max() <= 1
    assert torch.equal(first["video"], again["video"])
    assert first["instructions"][0].startswith("[Video edit] ")


def test_test_step_logs_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module()
    logged: dict[str, float] = {}
    monkeypatch.setattr(module, "log", lambda key, value, **kw: logged.__setitem__(key, value))
    module.test_step(_batch("speed_perturbation"), 0)
    assert set(logged) == {
        "test/speed_perturbation/fm_loss",
        "test/speed_perturbation/sem_loss",
        "test/loss",
    }


def test_cache_dir_gives_the_same_losses_without_re_encoding(tmp_path) -> None:
    plain = _module()
    cached = _module(cache_dir=str(tmp_path / "cache"))
    cached.model.load_state_dict(plain.model.state_dict())
    sample = plain.tasks_by_name["cube_inpainting"].prepare(
        clip_batch(2, FRAMES, SIZE), torch.Generator().manual_seed(0)
    )
    expected = plain.compute_losses(sample, torch.Generator().manual_seed(5))
    first = cached.compute_losses(sample, torch.Generator().manual_seed(5))
    cached.flush_cache()
    codec = cached._compute_encoders.value.codec
    misses = codec.misses
    # a fresh module on the same folder reads everything back from disk
    reloaded = _module(cache_dir=str(tmp_path / "cache"))
    reloaded.model.load_state_dict(plain.model.state_dict())
    second = reloaded.compute_losses(sample, torch.Generator().manual_seed(5))
    fresh_codec = reloaded._compute_encoders.value.codec
    assert misses > 0 and fresh_codec.misses == 0 and fresh_codec.hits > 0
    for a, b, c in zip(expected, first, second, strict=False):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b) and torch.equal(a, c)
