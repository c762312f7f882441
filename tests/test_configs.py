"""Every YAML under configs/ parses against the code (SamaCLI's parser, no instantiation), and the
run configs are composed from configs/_parts/ rather than copied (see configs/_parts/cpu.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sama.cli import SamaCLI
from tasks.sampler import PRETRAIN_MIX

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "configs" / "_parts"
ALL_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if PARTS not in p.parents)
BENCH = [p for p in ALL_CONFIGS if p.parent.name == "eval"]
# a run config includes a part (`config:`); the others are overlays given after a run config
# (a second --config, e.g. tiny/semantic-pooled-pixel.yaml)
CONFIGS = [p for p in ALL_CONFIGS if p not in BENCH and "config" in yaml.safe_load(p.read_text())]
OVERLAYS = [p for p in ALL_CONFIGS if p not in BENCH and p not in CONFIGS]
PAPER = [p for p in CONFIGS if p.parent.name.startswith("wan2.1")]
PRETEXT = ["Reconstruction", "CubeInpainting", "SpeedPerturbation", "TubeShuffle"]


def _id(path: Path) -> str:
    return path.relative_to(ROOT / "configs").as_posix()


def parsed(
    path: Path, *overrides: str, capsys: pytest.CaptureFixture[str], command: str = "fit"
) -> dict:
    """The full config after SamaCLI parsed and validated ``path`` (``--print_config``)."""
    with pytest.raises(SystemExit) as exit_info:
        SamaCLI(args=[command, f"--config={path}", *overrides, "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err[-2000:]
    return yaml.safe_load(out.out)


def _includes(path: Path) -> list[Path]:
    """``path`` and the files its ``config:`` keys include, outermost first."""
    chain = [path]
    while "config" in (raw := yaml.safe_load(chain[-1].read_text())):
        chain.append((chain[-1].parent / raw["config"]).resolve())
    return chain


def _weights(tasks: list[dict[str, Any]]) -> dict[str, float]:
    return {t["class_path"].rsplit(".", 1)[-1]: t["init_args"]["weight"] for t in tasks}


def test_configs_exist() -> None:
    names = {_id(p) for p in CONFIGS}
    assert {
        "tiny/pretrain.yaml",
        "tiny/sft.yaml",
        "tiny/editor-pretrain.yaml",
        "tiny/editor-sft.yaml",
        "ablation/pretrain.yaml",
        "ablation/sft.yaml",
        "wan2.1-1.3b/pretrain.yaml",
        "wan2.1-1.3b/sft.yaml",
        "wan2.1-14b/pretrain.yaml",
        "wan2.1-14b/sft.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_parses_against_the_code(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parsed(path, capsys=capsys)
    model = config["model"]
    assert model["semantic_weight"] == 0.1
    assert config["data"]["class_path"].endswith("SamaDataModule")
    weights = _weights(model["tasks"])
    if path.stem.endswith("pretrain"):
        assert {n: float(weights[n]) for n in PRETEXT} == dict(
            zip(PRETEXT, PRETRAIN_MIX.values(), strict=True)
        )
        assert weights["SemanticAnchoring"] > 0
    else:
        assert set(weights) == {"InstructionEditing", "SemanticAnchoring"}
        assert model["init_from"].endswith("pretrain/checkpoints/last.ckpt")


@pytest.mark.parametrize("path", PAPER, ids=_id)
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
    # the VAE and the text encoder come from the same Wan2.1 folder as the transformer
    assert model["codec"]["init_args"]["path"] == model["pretrained"]
    assert model["text_encoder"]["init_args"]["path"] == model["pretrained"]
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c for c in trainer["callbacks"]}
    if "DDPStrategy" in trainer["strategy"]["class_path"]:
        assert callbacks["EMAWeightAveraging"]["init_args"]["decay"] == 0.9998
    else:  # sharded models cannot use Lightning's weight averaging (see the YAML comment)
        assert "FSDPStrategy" in trainer["strategy"]["class_path"]


# --- composition: each shared piece is written once, in configs/_parts/ ---------------------


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_run_configs_are_composed_from_parts(path: Path) -> None:
    chain = _includes(path)
    assert all(p.is_file() for p in chain), chain
    assert any(PARTS in p.parents for p in chain), f"{_id(path)} includes nothing from _parts/"
    parts = {p.name for p in chain}
    # the encoders and the Wan model of a size come from exactly one part each
    assert len(parts & {"encoders-cpu.yaml", "encoders-wan.yaml"}) == 1, parts
    sizes = {n for n in parts if n.startswith("wan")}
    assert len(sizes) == 1, parts
    for file in chain:  # nobody but the parts writes a Wan config, an encoder or the seed
        raw = yaml.safe_load(file.read_text())
        keys = set(raw) | {k for k, v in raw.items() if isinstance(v, dict) for k in v}
        if PARTS not in file.parents:
            assert not {"model.model", "model.codec", "codec", "model"} & keys, (file, keys)
        assert not {"model.seed", "data.init_args.seed"} & set(raw), file


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_no_nested_branch_after_an_include_replaces_an_included_one(path: Path) -> None:
    """After ``config:``, ``model: {...}`` would replace the included ``model`` branch wholesale
    (jsonargparse applies the file's later keys branch by branch); overrides must be dotted."""
    for file, base in zip(_includes(path), _includes(path)[1:], strict=False):
        raw = yaml.safe_load(file.read_text())
        included: set[str] = set()
        for part in _includes(base):
            included |= {k.split(".", 1)[0] for k in yaml.safe_load(part.read_text())}
        nested = {k for k, v in raw.items() if "." not in k and isinstance(v, dict)}
        assert not nested & included, f"{file}: {sorted(nested & included)} replace {base}'s"


def test_a_part_overrides_and_keeps_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    """The composition rules the configs rely on, checked on the real parts: a dotted key after
    ``config:`` changes one value and keeps its siblings (in a dict, a subclass's init_args and
    a trainer list alike), and a list from a part file arrives whole."""
    tiny = parsed(ROOT / "configs/tiny/pretrain.yaml", capsys=capsys)
    editor = parsed(ROOT / "configs/tiny/editor-pretrain.yaml", capsys=capsys)
    paper = parsed(ROOT / "configs/wan2.1-14b/pretrain.yaml", capsys=capsys)
    for config in (tiny, editor):  # cpu.yaml + encoders-cpu.yaml under two different sizes
        assert config["trainer"]["accelerator"] == "cpu"
        assert config["model"]["codec"]["class_path"] == "sama.encoders.PixelCodec"
        assert config["model"]["text_encoder"]["init_args"]["max_length"] == 32
    assert tiny["model"]["model"]["wan_config"]["num_layers"] == 2
    assert editor["model"]["model"]["wan_config"]["num_layers"] == 4
    assert tiny["trainer"]["log_every_n_steps"] == 10  # cpu.yaml's
    assert editor["trainer"]["log_every_n_steps"] == 20  # overridden by editor-pretrain.yaml
    # a dotted init_args override keeps the class and the other init args of encoders-wan.yaml
    text = paper["model"]["text_encoder"]
    assert text["class_path"] == "sama.encoders.UMT5TextEncoder"
    assert text["init_args"]["path"] == "/path/to/Wan2.1-T2V-14B-Diffusers"
    assert (text["init_args"]["max_length"], text["init_args"]["dtype"]) == (512, "bfloat16")
    mix = yaml.safe_load((PARTS / "tasks-pretrain-mix.yaml").read_text())
    assert tiny["model"]["tasks"] == editor["model"]["tasks"]
    assert [t["class_path"] for t in tiny["model"]["tasks"]] == [t["class_path"] for t in mix]


@pytest.mark.parametrize("name", ["tasks-pretrain-mix.yaml", "tasks-pretrain-mix-paper.yaml"])
def test_the_pretrain_mixes_are_the_papers_ratio(name: str) -> None:
    weights = _weights(yaml.safe_load((PARTS / name).read_text()))
    assert [float(weights[n]) for n in PRETEXT] == list(PRETRAIN_MIX.values())
    assert set(weights) == {*PRETEXT, "SemanticAnchoring"}


def test_every_part_is_used() -> None:
    used = {p for run in CONFIGS for p in _includes(run)}
    for run in CONFIGS:
        for file in _includes(run):
            for value in yaml.safe_load(file.read_text()).values():
                if isinstance(value, str) and value.endswith(".yaml"):
                    used.add((file.parent / value).resolve())
    assert sorted(p.name for p in PARTS.glob("*.yaml") if p.resolve() not in used) == []


# --- one seed --------------------------------------------------------------------------------


class _ParseOnly(SamaCLI):
    """SamaCLI that parses (links applied) and instantiates nothing (paper configs need GPUs)."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_seed_everything_is_the_models_and_the_datas_seed(path: Path) -> None:
    written = next(
        raw["seed_everything"]
        for raw in map(yaml.safe_load, map(Path.read_text, _includes(path)))
        if "seed_everything" in raw
    )
    for seed in (written, written + 3):
        config = _ParseOnly(
            args=[f"--config={path}", f"--seed_everything={seed}"], run=False
        ).config
        assert (config["model"]["seed"], config["data"]["init_args"]["seed"]) == (seed, seed)


def test_a_derived_seed_cannot_be_set_on_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    sft = ROOT / "configs/tiny/sft.yaml"
    with pytest.raises(SystemExit) as exit_info:
        SamaCLI(args=["fit", f"--config={sft}", "--model.seed=5", "--print_config"])
    assert exit_info.value.code != 0
    assert 'must be given via "seed_everything"' in capsys.readouterr().err
    # jsonargparse accepts a subclass's init arg, and the link then replaces it
    config = _ParseOnly(args=[f"--config={sft}", "--data.init_args.seed=5"], run=False).config
    assert config["data"]["init_args"]["seed"] == config["seed_everything"] == 1


def test_seed_everything_must_be_an_integer(capsys: pytest.CaptureFixture[str]) -> None:
    sft = ROOT / "configs/tiny/sft.yaml"
    with pytest.raises(SystemExit) as exit_info:
        _ParseOnly(args=[f"--config={sft}", "--seed_everything=true"], run=False)
    assert exit_info.value.code != 0
    assert "seed_everything must be an integer" in capsys.readouterr().err


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


@pytest.mark.parametrize("path", OVERLAYS, ids=_id)
def test_overlays_parse_after_a_tiny_config(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parsed(ROOT / "configs/tiny/pretrain.yaml", f"--config={path}", capsys=capsys)
    overlay = yaml.safe_load(path.read_text())
    for branch, values in overlay.items():
        for key, value in values.items():
            assert config[branch][key]["class_path"] == value["class_path"]


@pytest.mark.parametrize("path", BENCH, ids=_id)
def test_bench_configs_parse_with_a_model_from_elsewhere(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `sama test --ckpt_path` supplies the model section from the checkpoint; stand in for it
    model = parsed(ROOT / "configs/tiny/sft.yaml", capsys=capsys)["model"]
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    config = parsed(path, f"--model={tmp_path / 'model.yaml'}", capsys=capsys, command="test")
    data = config["data"]
    assert data["class_path"].endswith("EvalDataModule")
    expected = {"synthedit.yaml": "SynthEditEvalSet", "real-footage.yaml": "RealFootageEvalSet"}
    assert data["init_args"]["benchmark"]["class_path"].endswith(expected[path.name])
