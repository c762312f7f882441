"""ShardedEMA on an unsharded run: matches Lightning's EMAWeightAveraging, swaps in for
validation, and survives a checkpoint / resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers_data import tiny_datamodule, tiny_model_config, tiny_trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from callbacks.ema import ShardedEMA
from datamodules import SamaDataModule
from sama.module import SamaModule

FRAMES, SIZE = 5, (16, 16)
#: EMAWeightAveraging computes decay * ema + (1 - decay) * p in one expression, ShardedEMA with
#: _foreach_mul_ then _foreach_add_(alpha=1 - decay): the same formula, rounded differently.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-7}


def _module(**overrides: object) -> SamaModule:
    torch.manual_seed(0)
    return SamaModule.from_config(tiny_model_config(**overrides))


def _datamodule() -> SamaDataModule:
    return tiny_datamodule(FRAMES, SIZE)


def _trainer(tmp_path, max_steps: int, callbacks: list, **kwargs: object) -> pl.Trainer:
    return tiny_trainer(tmp_path, max_steps, callbacks=callbacks, **kwargs)


def _trainable(module: SamaModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "options",
    [{}, {"update_every_n_steps": 2, "update_starting_at_step": 3}],
    ids=["every-step", "every-2-from-3"],
)
def test_matches_lightning_ema_weight_averaging(tmp_path, options: dict) -> None:
    steps, decay = 8, 0.7
    reference = _module()
    lightning_ema = EMAWeightAveraging(decay=decay, **options)
    _trainer(tmp_path / "a", steps, [lightning_ema]).fit(reference, _datamodule())

    module = _module()
    ema = ShardedEMA(decay=decay, **options)
    _trainer(tmp_path / "b", steps, [ema]).fit(module, _datamodule())

    expected = _trainable(reference)  # both callbacks copy the average in at the end of fit
    got = _trainable(module)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, **TOLERANCE, msg=name)
    averaged = dict(lightning_ema._average_model.module.named_parameters())
    for name, value in ema.ema_tensors.items():
        torch.testing.assert_close(value, averaged[name], **TOLERANCE, msg=name)
    assert ema.num_updates == (steps if not options else 2)  # zero-based steps 4 and 6


def test_validation_runs_on_the_ema_and_training_resumes_on_the_raw_weights(tmp_path) -> None:
    seen: dict[str, dict[str, torch.Tensor]] = {}

    class Spy(pl.Callback):
        def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            seen.setdefault("val", _trainable(pl_module))

        def on_validation_batch_end(self, trainer, *args) -> None:  # noqa: ANN001, ANN002
            if not (tmp_path / "during_val.ckpt").exists():
                trainer.save_checkpoint(tmp_path / "during_val.ckpt")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if trainer.global_step == 4:
                seen["after_val"] = _trainable(pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if trainer.global_step == 4:
                seen["raw"] = _trainable(pl_module)
                seen["ema"] = {k: v.clone() for k, v in ema.ema_tensors.items()}

    ema = ShardedEMA(decay=0.5)
    module = _module()
    trainer = _trainer(
        tmp_path,
        5,
        [ema, Spy()],
        limit_val_batches=1,
        val_check_interval=4,
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, _datamodule())
    assert any(not torch.equal(seen["raw"][k], seen["ema"][k]) for k in seen["raw"])
    during = torch.load(tmp_path / "during_val.ckpt", weights_only=False)
    for name, value in seen["ema"].items():
        assert torch.equal(seen["val"][name], value), name
        assert torch.equal(seen["after_val"][name], seen["raw"][name]), name
        # saved while the EMA was swapped in: still EMA as state_dict, raw beside it
        assert torch.equal(during["state_dict"][name], value), name
        assert torch.equal(during["current_model_state"][name], seen["raw"][name]), name


def test_checkpoint_holds_the_ema_and_resume_continues_it(tmp_path) -> None:
    decay = 0.6
    straight = ShardedEMA(decay=decay)
    _trainer(tmp_path / "straight", 6, [straight]).fit(_module(), _datamodule())

    saver = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)
    first = ShardedEMA(decay=decay)
    module = _module()
    _trainer(tmp_path / "first", 3, [first, saver]).fit(module, _datamodule())
    path = tmp_path / "ck" / "epoch=0-step=3.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    # EMAWeightAveraging's layout: the EMA as state_dict, the raw weights beside it
    for name, value in first.ema_tensors.items():
        assert torch.equal(checkpoint["state_dict"][name], value), name
    raw = checkpoint["current_model_state"]
    assert any(not torch.equal(raw[k], checkpoint["state_dict"][k]) for k in first.ema_tensors)

    resumed = ShardedEMA(decay=decay)
    module = _module()
    _trainer(tmp_path / "second", 6, [resumed]).fit(module, _datamodule(), ckpt_path=path)
    assert resumed.num_updates == 6
    for name, value in straight.ema_tensors.items():
        torch.testing.assert_close(resumed.ema_tensors[name], value, rtol=0, atol=0, msg=name)

    # init_from reads the EMA weights of such a checkpoint
    sft = _module(init_from=str(path))
    sft.setup("fit")
    for name, value in first.ema_tensors.items():
        assert torch.equal(dict(sft.named_parameters())[name], value), name


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="decay must be in"):
        ShardedEMA(decay=1.0)
    with pytest.raises(ValueError, match="update_every_n_steps"):
        ShardedEMA(update_every_n_steps=0)
