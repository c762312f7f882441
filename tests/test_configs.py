"""Every YAML under configs/ parses against the code (SamaCLI's parser, no instantiation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sama.cli import SamaCLI

ROOT = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
BENCH = [p for p in ALL_CONFIGS if p.parent.name == "eval"]
CONFIGS = [p for p in ALL_CONFIGS if p not in BENCH]
PAPER = [p for p in CONFIGS if p.parent.name.startswith("wan2.1")]


def parsed(
    path: Path, *overrides: str, capsys: pytest.CaptureFixture[str], command: str = "fit"
) -> dict:
    """The full config after SamaCLI parsed and validated ``path`` (``--print_config``)."""
    with pytest.raises(SystemExit) as exit_info:
        SamaCLI(args=[command, f"--config={path}", *overrides, "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err[-2000:]
    return yaml.safe_load(out.out)


def test_configs_exist() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert {
        "tiny/pretrain.yaml",
        "tiny/sft.yaml",
        "wan2.1-1.3b/pretrain.yaml",
        "wan2.1-1.3b/sft.yaml",
        "wan2.1-14b/pretrain.yaml",
        "wan2.1-14b/sft.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_parses_against_the_code(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parsed(path, capsys=capsys)
    model = config["model"]
    assert model["semantic_weight"] == 0.1
    assert config["data"]["class_path"].endswith("SamaDataModule")
    names = [task["class_path"].rsplit(".", 1)[-1] for task in model["tasks"]]
    weights = {
        n: task["init_args"]["weight"] for n, task in zip(names, model["tasks"], strict=True)
    }
    if path.stem.endswith("pretrain"):
        assert [
            weights[n]
            for n in ("Reconstruction", "CubeInpainting", "SpeedPerturbation", "TubeShuffle")
        ] == [1, 2, 3, 4]
        assert weights["SemanticAnchoring"] > 0
    else:
        assert set(names) == {"InstructionEditing", "SemanticAnchoring"}
        assert model["init_from"].endswith("pretrain/checkpoints/last.ckpt")


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_paper_configs_use_the_paper_settings(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = parsed(path, capsys=capsys)
    model, trainer = config["model"], config["trainer"]
    assert model["lr"] == 2e-5 and model["gradient_checkpointing"] is True
    assert trainer["precision"] == "bf16-mixed"
    assert model["pretrained"].startswith("/path/to/Wan2.1-T2V-")
    assert model["semantic_encoder"]["class_path"] == "sama.encoders.SiglipSemanticEncoder"
    assert model["codec"]["class_path"] == "sama.encoders.WanVAECodec"
    assert model["text_encoder"]["class_path"] == "sama.encoders.UMT5TextEncoder"
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c for c in trainer["callbacks"]}
    if "DDPStrategy" in trainer["strategy"]["class_path"]:
        assert callbacks["EMAWeightAveraging"]["init_args"]["decay"] == 0.9998
    else:  # sharded models cannot use Lightning's weight averaging (see the YAML comment)
        assert "FSDPStrategy" in trainer["strategy"]["class_path"]


def test_a_wrong_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "configs/tiny/pretrain.yaml"
    with pytest.raises(SystemExit) as exit_info:
        SamaCLI(args=["fit", f"--config={path}", "--model.semantic_wieght=0.2", "--print_config"])
    assert exit_info.value.code != 0
    with pytest.raises(SystemExit) as exit_info:
        SamaCLI(
            args=[
                "fit",
                f"--config={path}",
                "--model.tasks=[{class_path: tasks.TubeShuffle, init_args: {grdi: [2, 2, 2]}}]",
                "--print_config",
            ]
        )
    assert exit_info.value.code != 0


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_bench_configs_parse_with_a_model_from_elsewhere(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `sama test --ckpt_path` supplies the model section from the checkpoint; stand in for it
    model = yaml.safe_load((ROOT / "configs/tiny/sft.yaml").read_text())["model"]
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    config = parsed(path, f"--model={tmp_path / 'model.yaml'}", capsys=capsys, command="test")
    data = config["data"]
    assert data["class_path"].endswith("EvalDataModule")
    assert data["init_args"]["benchmark"]["class_path"].endswith("SynthEditEvalSet")
