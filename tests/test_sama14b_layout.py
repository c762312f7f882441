"""sama/checkpoints.py against the released layouts (tests/fixtures/*_layout.json), 1:1.

The fixtures list every key and shape of the SAMA-14B release (``Cynthiazxy123/SAMA``,
``diffsynth/models/wan_video_dit.py`` ``WanModel`` + the semantic MLP and head) and of plain
Wan2.1-T2V checkpoints in the original layout. Everything runs on the meta device: the real
loader and exporter see 14B-shaped tensors that take no memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sama.checkpoints as checkpoints
from sama.checkpoints import (
    diffusers_to_original_key,
    export_sama_release,
    infer_wan_config,
    load_sama_release,
    original_to_diffusers_key,
)
from sama.model import SamaTransformer
from sama.plan.arch import wan21_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _layout(name: str) -> dict:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the lead provides the released key layout there")
    return json.loads(path.read_text())


def _meta_model(size: str) -> SamaTransformer:
    with torch.device("meta"):
        return SamaTransformer(wan21_config(size), semantic_dim=1152, semantic_hidden=1024)


def _shapes(state: dict) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


def test_sama14b_export_names_are_exactly_the_release() -> None:
    layout = _layout("sama14b_layout.json")
    model = _meta_model("14B")
    exported = {diffusers_to_original_key(k): list(v.shape) for k, v in model.state_dict().items()}
    assert exported == layout["keys"]
    assert len(exported) == layout["num_tensors"] == 1106
    assert sum(p.numel() for p in model.parameters()) == layout["num_parameters"]


def test_sama14b_release_names_map_onto_the_model() -> None:
    layout = _layout("sama14b_layout.json")
    own = _shapes(_meta_model("14B").state_dict())
    mapped = {original_to_diffusers_key(k): shape for k, shape in layout["keys"].items()}
    assert mapped == own


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("wan21_t2v_14b_original_layout.json", "14B"),
        ("wan21_t2v_1.3b_original_layout.json", "1.3B"),
    ],
)
def test_plain_wan_original_layout(name: str, size: str) -> None:
    layout = _layout(name)
    wan = _meta_model(size).wan
    exported = {
        diffusers_to_original_key(f"wan.{k}"): list(v.shape) for k, v in wan.state_dict().items()
    }
    assert exported == layout["keys"]
    assert sum(p.numel() for p in wan.parameters()) == layout["num_parameters"]
    state = {k: torch.empty(s, device="meta") for k, s in layout["keys"].items()}
    inferred = infer_wan_config(state)
    expected = wan21_config(size)
    for field in inferred:
        assert inferred[field] == expected[field], field


def test_real_loader_and_exporter_on_14b_meta_tensors(monkeypatch, tmp_path) -> None:
    """load_sama_release reads a 14B-shaped release; export_sama_release writes it back."""
    layout = _layout("sama14b_layout.json")
    release = {k: torch.empty(s, device="meta") for k, s in layout["keys"].items()}
    monkeypatch.setattr(checkpoints, "load_state_dict_file", lambda path: dict(release))
    with torch.device("meta"):
        model = load_sama_release(tmp_path / "sama14b.safetensors")
    assert model.wan.config.num_layers == 40 and model.semantic_dim == 1152
    assert model.semantic_hidden == 1024 and model.dim == 5120

    written: dict[str, list[int]] = {}

    def fake_save_file(state: dict, path: str, metadata: dict | None = None) -> None:
        written.update(_shapes(state))
        Path(path).write_bytes(b"meta")

    monkeypatch.setattr(checkpoints, "save_file", fake_save_file)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self: self)  # meta tensors stay meta
    export_sama_release(model, tmp_path / "out.safetensors")
    assert written == layout["keys"]


def test_a_wrong_shape_in_the_release_is_refused(monkeypatch, tmp_path) -> None:
    layout = _layout("sama14b_layout.json")
    release = {k: torch.empty(s, device="meta") for k, s in layout["keys"].items()}
    release["semantic_head.proj.weight"] = torch.empty(1152, 4096, device="meta")
    monkeypatch.setattr(checkpoints, "load_state_dict_file", lambda path: dict(release))
    with torch.device("meta"), pytest.raises(checkpoints.CheckpointFormatError, match="shape"):
        load_sama_release(tmp_path / "bad.safetensors")
