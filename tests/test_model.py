"""SamaTransformer: token layout, RoPE, prior preservation, gradients, save / load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from sama.model import SamaOutput, SamaTransformer, tiny_wan_config

SEM_DIM = 24
TEXT_DIM = 32


def make_model(**overrides: int) -> SamaTransformer:
    return SamaTransformer(tiny_wan_config(**overrides), semantic_dim=SEM_DIM, semantic_hidden=32)


@pytest.fixture
def model() -> SamaTransformer:
    return make_model().eval()


def inputs(batch: int = 2, frames: int = 3, size: int = 8) -> tuple[torch.Tensor, ...]:
    target = torch.randn(batch, 16, frames, size, size)
    timestep = torch.tensor([700.0, 30.0])[:batch]
    text = torch.randn(batch, 5, TEXT_DIM)
    return target, timestep, text


@pytest.mark.parametrize(
    ("target_frames", "source_frames", "num_semantic"),
    [(3, None, 0), (3, 3, 0), (3, 1, 65), (1, 1, 65), (1, None, 130), (2, 4, 0)],
)
def test_output_shapes(
    model: SamaTransformer, target_frames: int, source_frames: int | None, num_semantic: int
) -> None:
    target, timestep, text = inputs(frames=target_frames)
    source = None if source_frames is None else torch.randn(2, 16, source_frames, 8, 8)
    semantic = torch.randn(2, num_semantic, SEM_DIM) if num_semantic else None
    with torch.no_grad():
        out = model(target, timestep, text, source_latents=source, semantic_tokens=semantic)
    assert isinstance(out, SamaOutput)
    assert out.velocity.shape == target.shape
    if semantic is None:
        assert out.semantic is None
    else:
        assert out.semantic.shape == (2, num_semantic, SEM_DIM)


def test_prior_preservation_matches_wan_forward(model: SamaTransformer) -> None:
    target, timestep, text = inputs()
    with torch.no_grad():
        ours = model(target, timestep, text).velocity
        reference = model.wan(
            hidden_states=target, timestep=timestep, encoder_hidden_states=text
        ).sample
    assert (ours - reference).abs().max().item() <= 1e-5


def test_type_embedding_is_added_to_target_tokens(model: SamaTransformer) -> None:
    target, timestep, text = inputs()
    with torch.no_grad():
        before = model(target, timestep, text).velocity
        model.segment_embedding.weight[2].normal_()
        after = model(target, timestep, text).velocity
    assert (after - before).abs().max() > 1e-3


def test_source_and_semantic_condition_the_target(model: SamaTransformer) -> None:
    target, timestep, text = inputs()
    source = torch.randn(2, 16, 3, 8, 8)
    semantic = torch.randn(2, 65, SEM_DIM)
    with torch.no_grad():
        plain = model(target, timestep, text).velocity
        with_source = model(target, timestep, text, source_latents=source).velocity
        other_source = model(target, timestep, text, source_latents=source.flip(0)).velocity
        with_semantic = model(target, timestep, text, semantic_tokens=semantic).velocity
    assert (with_source - plain).abs().max() > 1e-4
    assert (with_source - other_source).abs().max() > 1e-4
    assert (with_semantic - plain).abs().max() > 1e-4


def test_text_mask_zeroes_padded_positions(model: SamaTransformer) -> None:
    target, timestep, text = inputs()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    zeroed = text.clone()
    zeroed[1, 2:] = 0
    with torch.no_grad():
        masked = model(target, timestep, text, text_mask=mask).velocity
        manual = model(target, timestep, zeroed).velocity
        unmasked = model(target, timestep, text).velocity
    torch.testing.assert_close(masked, manual)
    assert (masked[1] - unmasked[1]).abs().max() > 1e-4
    torch.testing.assert_close(masked[0], unmasked[0])


def test_rotary_layout_source_like_target_semantic_identity(model: SamaTransformer) -> None:
    target = torch.randn(1, 16, 3, 8, 8)
    cos, sin = model.rotary_embeddings(target, source_latents=target.clone(), num_semantic=7)
    n = 3 * 4 * 4
    assert cos.shape == (1, 2 * n + 7, 1, 32)
    torch.testing.assert_close(cos[:, :n], cos[:, -n:])
    torch.testing.assert_close(sin[:, :n], sin[:, -n:])
    assert torch.all(cos[:, n : n + 7] == 1) and torch.all(sin[:, n : n + 7] == 0)
    assert not torch.all(sin[:, -n:] == 0)  # the target does rotate

    # A 1-frame source starts at frame 0, like the target: it equals the target's first frame.
    cos1, sin1 = model.rotary_embeddings(target, source_latents=target[:, :, :1], num_semantic=0)
    per_frame = 4 * 4
    torch.testing.assert_close(cos1[:, :per_frame], cos1[:, per_frame : 2 * per_frame])
    torch.testing.assert_close(sin1[:, :per_frame], sin1[:, per_frame : 2 * per_frame])


def test_forward_passes_the_rotary_layout_to_every_block(model: SamaTransformer) -> None:
    target, timestep, text = inputs()
    source = torch.randn(2, 16, 1, 8, 8)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        block.attn1.register_forward_pre_hook(lambda _m, args: seen.append(args[3]))
        for block in model.wan.blocks
    ]
    with torch.no_grad():
        model(
            target,
            timestep,
            text,
            source_latents=source,
            semantic_tokens=torch.randn(2, 5, SEM_DIM),
        )
    for hook in hooks:
        hook.remove()
    expected = model.rotary_embeddings(target, source_latents=source, num_semantic=5)
    assert len(seen) == len(model.wan.blocks)
    for cos, sin in seen:
        torch.testing.assert_close(cos, expected[0])
        torch.testing.assert_close(sin, expected[1])


def test_semantic_tokens_carry_no_position(model: SamaTransformer) -> None:
    """Unrotated semantic tokens: permuting them permutes their outputs, velocity unchanged."""
    target, timestep, text = inputs()
    semantic = torch.randn(2, 9, SEM_DIM)
    perm = torch.randperm(9)
    with torch.no_grad():
        out = model(target, timestep, text, semantic_tokens=semantic)
        permuted = model(target, timestep, text, semantic_tokens=semantic[:, perm])
    torch.testing.assert_close(permuted.velocity, out.velocity, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted.semantic, out.semantic[:, perm], atol=1e-5, rtol=1e-5)


def _loss(model: SamaTransformer, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(2, 16, 2, 8, 8, generator=generator)
    source = torch.randn(2, 16, 1, 8, 8, generator=generator)
    semantic = torch.randn(2, 65, SEM_DIM, generator=generator)
    text = torch.randn(2, 5, TEXT_DIM, generator=generator)
    out = model(
        target, torch.tensor([400.0, 900.0]), text, source_latents=source, semantic_tokens=semantic
    )
    return out.velocity.square().mean() + (out.semantic - semantic).abs().mean()


def test_gradients_reach_new_modules() -> None:
    model = make_model().train()
    _loss(model).backward()
    grad = model.segment_embedding.weight.grad
    assert grad is not None and torch.all(grad.abs().sum(dim=1) > 0)  # rows 0, 1, 2
    for param in [
        model.siglip_feat_mlp.norm.weight,
        model.siglip_feat_mlp.fc1.weight,
        model.siglip_feat_mlp.fc2.weight,
        model.semantic_head.norm.weight,
        model.semantic_head.proj.weight,
        model.wan.patch_embedding.weight,
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_gradient_checkpointing_same_loss_and_grads() -> None:
    plain = make_model().train()
    checkpointed = make_model().train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.enable_gradient_checkpointing()
    loss_plain, loss_ckpt = _loss(plain), _loss(checkpointed)
    loss_plain.backward()
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss_plain)
    for (name, a), (_, b) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b.grad, a.grad, msg=name, atol=1e-6, rtol=1e-5)


def test_checkpoint_layout_names() -> None:
    keys = set(make_model().state_dict())
    assert {
        "segment_embedding.weight",
        "siglip_feat_mlp.norm.weight",
        "siglip_feat_mlp.fc1.weight",
        "siglip_feat_mlp.fc2.bias",
        "semantic_head.norm.weight",
        "semantic_head.proj.weight",
    } <= keys
    assert make_model().segment_embedding.weight.shape == (3, 64)


def test_save_pretrained_round_trip(tmp_path: Path, model: SamaTransformer) -> None:
    with torch.no_grad():
        model.segment_embedding.weight.normal_()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "sama_config.json"]
    loaded = SamaTransformer.from_pretrained(tmp_path).eval()
    assert loaded.semantic_dim == SEM_DIM and loaded.semantic_hidden == 32
    target, timestep, text = inputs()
    kwargs = {
        "source_latents": torch.randn(2, 16, 1, 8, 8),
        "semantic_tokens": torch.randn(2, 65, SEM_DIM),
    }
    with torch.no_grad():
        a = model(target, timestep, text, **kwargs)
        b = loaded(target, timestep, text, **kwargs)
    assert torch.equal(a.velocity, b.velocity) and torch.equal(a.semantic, b.semantic)
    with pytest.raises(ValueError, match="semantic_dim"):
        SamaTransformer.from_pretrained(tmp_path, semantic_dim=SEM_DIM + 1)


def test_torn_save_is_detected(tmp_path: Path, model: SamaTransformer) -> None:
    model.save_pretrained(tmp_path)
    config = tmp_path / "sama_config.json"
    meta = json.loads(config.read_text())
    meta["weights_bytes"] += 1
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="interrupted save"):
        SamaTransformer.from_pretrained(tmp_path)


@pytest.mark.parametrize("subfolder", ["", "transformer"])
def test_from_pretrained_diffusers_wan_dir(tmp_path: Path, subfolder: str) -> None:
    wan = WanTransformer3DModel(**tiny_wan_config()).eval()
    wan.save_pretrained(tmp_path / subfolder if subfolder else tmp_path)
    with pytest.raises(ValueError, match="semantic_dim"):
        SamaTransformer.from_pretrained(tmp_path)
    model = SamaTransformer.from_pretrained(tmp_path, semantic_dim=SEM_DIM).eval()
    target, timestep, text = inputs()
    with torch.no_grad():
        ours = model(target, timestep, text).velocity
        reference = wan(hidden_states=target, timestep=timestep, encoder_hidden_states=text).sample
    assert (ours - reference).abs().max().item() <= 1e-5


def test_from_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an existing local directory"):
        SamaTransformer.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="sama_config.json"):
        SamaTransformer.from_pretrained(tmp_path)


def test_from_wan_wraps_the_given_backbone() -> None:
    wan = WanTransformer3DModel(**tiny_wan_config())
    model = SamaTransformer.from_wan(wan, semantic_dim=SEM_DIM, semantic_hidden=16)
    assert model.wan is wan
    assert model.siglip_feat_mlp.fc1.out_features == 16
    assert model.wan_config["num_layers"] == 2
    assert torch.all(model.segment_embedding.weight == 0)


def test_attention_backend_by_name(model: SamaTransformer) -> None:
    target, timestep, text = inputs()
    with torch.no_grad():
        before = model(target, timestep, text).velocity
        model.set_attention_backend("native")
        after = model(target, timestep, text).velocity
    torch.testing.assert_close(after, before)
    with pytest.raises(ValueError):
        model.set_attention_backend("no-such-backend")


def test_input_errors(model: SamaTransformer) -> None:
    target, timestep, text = inputs()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 4, 3, 8, 8), timestep, text)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 16, 3, 7, 8), timestep, text)
    with pytest.raises(ValueError, match="per-token"):
        model(target, torch.zeros(2, 10), text)
    with pytest.raises(ValueError, match="semantic_tokens"):
        model(target, timestep, text, semantic_tokens=torch.randn(2, 4, SEM_DIM + 1))
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        model(torch.randn(2, 16, 1, 8, 2 * 65), timestep, text)


def test_tiny_wan_config_validates_head_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        tiny_wan_config(dim=64, num_heads=3)
    with pytest.raises(ValueError, match="even"):
        tiny_wan_config(dim=30, num_heads=6)
    config = tiny_wan_config(dim=48, num_heads=4, in_channels=8)
    assert config["attention_head_dim"] == 12 and config["out_channels"] == 8
    SamaTransformer(config, semantic_dim=8)  # builds with Wan's RoPE split


def test_tiny_overfit_one_pair() -> None:
    """One source -> one target with fixed noise: Adam drives the flow loss down >= 10x."""
    torch.manual_seed(0)
    model = make_model().train()
    generator = torch.Generator().manual_seed(1)
    source = torch.randn(1, 16, 1, 8, 8, generator=generator)
    target = source.flip(-1) + 0.5  # the "edit"
    semantic = torch.randn(1, 65, SEM_DIM, generator=generator)
    text = torch.randn(1, 5, TEXT_DIM, generator=generator)
    t = torch.tensor([0.3, 0.7])
    noise = torch.randn(2, 16, 1, 8, 8, generator=generator)
    sem_noise = torch.randn(2, 65, SEM_DIM, generator=generator)
    x_t = t.view(-1, 1, 1, 1, 1) * target + (1 - t.view(-1, 1, 1, 1, 1)) * noise
    s_t = t.view(-1, 1, 1) * semantic + (1 - t.view(-1, 1, 1)) * sem_noise
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    start = time.perf_counter()
    losses = []
    for _ in range(60):
        out = model(
            x_t,
            1000 * (1 - t),
            text.expand(2, -1, -1),
            source_latents=source.expand(2, -1, -1, -1, -1),
            semantic_tokens=s_t,
        )
        loss = (out.velocity - (target - noise)).square().mean()
        loss = loss + 0.1 * (out.semantic - (semantic - sem_noise)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    assert losses[-1] <= losses[0] / 10, (losses[0], losses[-1])
    assert elapsed < 60


@pytest.mark.gpu
def test_cuda_matches_cpu_and_trains_under_bf16_autocast() -> None:
    cpu = make_model().eval()
    gpu = make_model()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda").eval()
    target, timestep, text = inputs()
    source, semantic = torch.randn(2, 16, 1, 8, 8), torch.randn(2, 65, SEM_DIM)
    args = (target, timestep, text)
    with torch.no_grad():
        a = cpu(*args, source_latents=source, semantic_tokens=semantic)
        b = gpu(
            *(x.cuda() for x in args), source_latents=source.cuda(), semantic_tokens=semantic.cuda()
        )
    torch.testing.assert_close(b.velocity.cpu(), a.velocity, atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(b.semantic.cpu(), a.semantic, atol=5e-3, rtol=5e-3)
    gpu.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(
            *(x.cuda() for x in args), source_latents=source.cuda(), semantic_tokens=semantic.cuda()
        )
        loss = out.velocity.float().square().mean() + out.semantic.float().abs().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert gpu.segment_embedding.weight.grad.abs().sum() > 0
