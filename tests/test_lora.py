"""LoRA through peft: frozen base, trainable adapters and SAMA modules, trainable-only
checkpoints, merged export and a peft-loadable adapter folder."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers_data import tiny_datamodule, tiny_model_config, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import SamaDataModule
from sama.export import read_checkpoint
from sama.lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS_NAME,
    DEFAULT_TARGET_MODULES,
    LoraSettings,
    apply_lora,
    count_parameters,
    load_adapter,
)
from sama.model import SamaTransformer
from sama.module import SamaModule
from sama.pipeline import EditPipeline

FRAMES, SIZE = 5, (16, 16)
LORA = {"rank": 4, "alpha": 8}


def _module(**overrides: object) -> SamaModule:
    return SamaModule.from_config(tiny_model_config(**overrides))


def _datamodule() -> SamaDataModule:
    return tiny_datamodule(FRAMES, SIZE)


def _trainer(tmp_path, max_steps: int, **kwargs: object) -> pl.Trainer:
    return tiny_trainer(tmp_path, max_steps, **kwargs)


def _inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 48, 2, 2, 2, generator=generator)
    text = torch.randn(1, 4, 32, generator=generator)
    semantic = torch.randn(1, 5, 16, generator=generator)
    return x, torch.tensor([500.0]), text, semantic


def _outputs(model: SamaTransformer) -> torch.Tensor:
    x, t, text, semantic = _inputs()
    model.eval()
    with torch.no_grad():
        out = model(x, t, text, source_latents=x, semantic_tokens=semantic)
    return torch.cat([out.velocity.flatten(), out.semantic.flatten()])


def test_settings_are_validated_with_clear_errors() -> None:
    assert LoraSettings.parse(None) is None
    settings = LoraSettings.parse({"rank": 8})
    assert settings.alpha == 16.0 and settings.target_modules == DEFAULT_TARGET_MODULES
    with pytest.raises(ValueError, match="lora.rank must be a positive integer"):
        LoraSettings.parse({"rank": 0})
    with pytest.raises(ValueError, match=r"lora.dropout must be in \[0, 1\)"):
        LoraSettings.parse({"dropout": 1.0})
    with pytest.raises(ValueError, match="unknown key"):
        LoraSettings.parse({"r": 4})
    with pytest.raises(ValueError, match="non-empty list"):
        LoraSettings.parse({"target_modules": "to_q"})
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        _module(lora={"target_modules": ["to_qkv"]})


def test_only_adapters_and_sama_modules_train() -> None:
    module = _module(lora=LORA)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    for name in trainable:
        assert ".lora_" in name or name.split(".")[0] in (
            "segment_embedding",
            "siglip_feat_mlp",
            "semantic_head",
        ), name
    # every default target of both blocks (self + cross attention, FFN) is wrapped
    wrapped = {n.rsplit(".lora_A", 1)[0] for n in trainable if ".lora_A." in n}
    assert len(wrapped) == 2 * (4 + 4 + 2)
    assert any(n.startswith("siglip_feat_mlp.") for n in trainable)
    optimizer = module.configure_optimizers()["optimizer"]
    optimized = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert optimized == count_parameters(module.model)[0]


def test_lora_builds_on_the_meta_device_with_the_trainable_count() -> None:
    config = tiny_model_config()["model"]["wan_config"]
    with torch.device("meta"):
        model = SamaTransformer(config, semantic_dim=16, semantic_hidden=32)
        apply_lora(model, LoraSettings(rank=4))
    trainable, total = count_parameters(model)
    dim, ffn = 32, 64
    rank = 4  # 8 attention linears dim -> dim and 2 FFN linears per block, A and B each
    per_block = 8 * rank * (dim + dim) + 2 * rank * (dim + ffn)
    sama = 3 * dim + (2 * 16 + 16 * 32 + 32 + 32 * dim + dim) + (2 * dim + dim * 16 + 16)
    assert trainable == 2 * per_block + sama
    assert all(p.device.type == "meta" for p in model.parameters())
    assert total > trainable


def test_training_keeps_the_base_frozen_and_saves_trainable_weights_only(tmp_path) -> None:
    stage0 = _module().export(tmp_path / "stage0")
    module = _module(lora=LORA, init_from=str(stage0))
    module.setup("fit")  # the base of the run: stage 0's weights (fit reads them again)
    base = {
        n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad
    }
    lora = {n: p.detach().clone() for n, p in module.model.named_parameters() if ".lora_B" in n}
    sama = module.model.siglip_feat_mlp.fc1.weight.detach().clone()
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            losses.append(float(outputs["loss"]))

    _trainer(tmp_path, 3, callbacks=[saver, Losses()]).fit(module, _datamodule())

    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    params = dict(module.model.named_parameters())
    for name, value in base.items():
        assert torch.equal(params[name], value), f"frozen {name} changed"
    assert all(not torch.equal(params[n], v) for n, v in lora.items()), "a LoRA B did not train"
    assert not torch.equal(module.model.siglip_feat_mlp.fc1.weight, sama)

    checkpoint = torch.load(tmp_path / "epoch=0-step=3.ckpt", weights_only=False)
    keys = set(checkpoint["state_dict"])
    expected = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert keys == expected
    assert checkpoint["sama_lora"]["rank"] == 4

    # the checkpoint reloads onto the same base, read again from init_from
    loaded = SamaModule.load_from_checkpoint(tmp_path / "epoch=0-step=3.ckpt")
    torch.testing.assert_close(_outputs(loaded.model), _outputs(module.model), rtol=0, atol=0)
    # without a base to read, loading refuses instead of using a random init
    orphan = _module(lora=LORA)
    with pytest.raises(ValueError, match="holds no base weights"):
        orphan.on_load_checkpoint(dict(checkpoint))
    # inference reads exports; a trainable-only checkpoint says what to do
    with pytest.raises(ValueError, match="a LoRA checkpoint holds only the trainable weights"):
        read_checkpoint(tmp_path / "epoch=0-step=3.ckpt")


def test_resume_reads_the_base_from_init_from(tmp_path) -> None:
    stage0 = _module()
    stage0_path = stage0.export(tmp_path / "stage0")
    module = _module(lora=LORA, init_from=str(stage0_path))
    saver = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2, save_top_k=-1)
    _trainer(tmp_path, 2, callbacks=[saver]).fit(module, _datamodule())
    trained = _outputs(module.model)

    resumed = _module(lora=LORA, init_from=str(stage0_path))
    _trainer(tmp_path, 2).fit(resumed, _datamodule(), ckpt_path=tmp_path / "ck/epoch=0-step=2.ckpt")
    torch.testing.assert_close(_outputs(resumed.model), trained, rtol=0, atol=0)
    # the base is stage 0's, not the fresh init of the config
    name = "wan.blocks.0.attn1.to_q.base_layer.weight"
    plain = name.replace(".base_layer.", ".")
    assert torch.equal(resumed.model.state_dict()[name], stage0.model.state_dict()[plain])
    fresh = _module(lora=LORA)
    assert not torch.equal(fresh.model.state_dict()[name], stage0.model.state_dict()[plain])


def test_export_is_merged_and_the_adapter_loads_with_peft(tmp_path) -> None:
    from peft import PeftModel

    module = _module(lora=LORA)
    _trainer(tmp_path, 3).fit(module, _datamodule())
    base_state = {
        n.replace(".base_layer.", "."): p.detach().clone()
        for n, p in module.model.named_parameters()
        if not p.requires_grad
    }
    export = module.export(tmp_path / "export")

    # merged: an ordinary export, no LoRA keys, same outputs up to float rounding
    merged = SamaTransformer.from_pretrained(export)
    pipeline = EditPipeline.from_checkpoint(export)  # what `sama edit --checkpoint` loads
    for key, value in merged.state_dict().items():
        assert torch.equal(pipeline.model.state_dict()[key], value), key
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    expected = _outputs(module.model)
    torch.testing.assert_close(_outputs(merged), expected, rtol=1e-5, atol=1e-5)

    adapter = export / ADAPTER_DIR
    assert (adapter / ADAPTER_CONFIG_NAME).is_file() and (adapter / ADAPTER_WEIGHTS_NAME).is_file()

    def fresh_base() -> SamaTransformer:
        model = SamaTransformer(
            module.model.wan_config, semantic_dim=16, semantic_hidden=32
        )  # a different random init, then the frozen base weights of the run
        own = model.state_dict()
        model.load_state_dict({k: base_state.get(k, v) for k, v in own.items()}, strict=True)
        return model

    # peft itself loads the adapter onto a fresh Wan base: identical Wan outputs
    x, t, text, _ = _inputs()
    peft_wan = PeftModel.from_pretrained(fresh_base().wan, str(adapter)).eval()
    module.model.wan.eval()
    with torch.no_grad():
        got = peft_wan(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
        want = module.model.wan(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    # adapter + SAMA modules onto a fresh SamaTransformer: identical SAMA outputs
    torch.testing.assert_close(
        _outputs(load_adapter(fresh_base(), adapter)), expected, rtol=0, atol=0
    )


def test_lora_gets_gradients_under_gradient_checkpointing() -> None:
    from helpers_data import clip_batch

    module = _module(lora=LORA, gradient_checkpointing=True)
    for name, param in module.model.named_parameters():
        if ".lora_B" in name:  # B starts at zero: make A's gradient non-zero too
            torch.nn.init.normal_(param, std=0.02)
    module.log = lambda *args, **kwargs: None
    loss = module.training_step({**clip_batch(2, FRAMES, SIZE), "task": "tube_shuffle"}, 0)
    loss.backward()
    for name, param in module.model.named_parameters():
        if param.requires_grad and name.split(".")[0] != "siglip_feat_mlp":
            if name.startswith("semantic_head"):
                continue  # tube_shuffle carries no semantic tokens
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        elif not param.requires_grad:
            assert param.grad is None, name
