"""The export format (sama/export.py): write + read, checksums, trusted encoder classes, the
shipped tiny editor, and reading without training code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_data import tiny_model_config

from sama.encoders import PixelCodec
from sama.export import (
    CHECKSUMS_FILE,
    EDIT_PREFIX,
    ENCODERS_FILE,
    NEGATIVE_PROMPT,
    ChecksumError,
    InferenceInfo,
    build_encoder,
    describe,
    load_encoders,
    read_export,
    read_inference,
    write_export,
)
from sama.files import verify_checksums
from sama.flow import SamplingSettings
from sama.model import SamaTransformer
from sama.module import SamaModule
from tasks import CubeInpainting

ROOT = Path(__file__).resolve().parents[1]
TINY_EDITOR = ROOT / "weights" / "tiny-editor"
REAL_EDITOR = ROOT / "weights" / "real-editor"


@pytest.fixture(scope="module")
def module() -> SamaModule:
    return SamaModule.from_config(tiny_model_config(sample_steps=7, guidance_scale=2.5))


@pytest.fixture
def export(module: SamaModule, tmp_path: Path) -> Path:
    return module.export(tmp_path / "export")


def _rewrite_encoders(export: Path, **fields: object) -> None:
    """Change fields of encoders.json and drop SHA256SUMS (a hand-edited export)."""
    spec = json.loads((export / ENCODERS_FILE).read_text())
    spec.update(fields)
    (export / ENCODERS_FILE).write_text(json.dumps(spec))
    (export / CHECKSUMS_FILE).unlink()


def test_export_round_trip(module: SamaModule, export: Path) -> None:
    spec = json.loads((export / ENCODERS_FILE).read_text())
    assert spec["codec"]["class_path"] == "sama.encoders.PixelCodec"
    assert spec["identity"]["codec"] == module.encoders.codec.identity
    # checksums cover every file and are written last
    assert set(verify_checksums(export)) == {
        "encoders.json",
        "model.safetensors",
        "sama_config.json",
    }
    info = read_inference(export)
    # grid 2: 5 tokens per frame; sampler defaults are the module's hyper-parameters
    assert info == InferenceInfo(
        anchor_frames=1,
        semantic_tokens_per_frame=5,
        prompt_prefix=EDIT_PREFIX,
        negative_prompt=NEGATIVE_PROMPT,
        sampling=SamplingSettings(steps=7, guidance=2.5, shift=5.0),
    )
    encoders = load_encoders(export)
    assert [e.identity for e in encoders] == [e.identity for e in module.encoders]
    loaded = read_export(export)
    for key, value in module.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.codec.identity == module.encoders.codec.identity
    assert loaded.text_encoder.identity == module.encoders.text.identity
    # no temporary folders are left beside the export
    assert sorted(p.name for p in export.parent.iterdir()) == ["export"]


def test_export_replaces_an_old_export_and_refuses_other_folders(
    module: SamaModule, export: Path, tmp_path: Path
) -> None:
    (export / "stale.txt").write_text("from an older export")
    module.export(export, extra_files={"summary.json": "{}\n"})
    assert not (export / "stale.txt").exists()
    assert "summary.json" in verify_checksums(export)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an export"):
        module.export(other)
    assert (other / "keep.txt").read_text() == "mine"


def test_a_failed_export_leaves_no_half_written_folder(
    module: SamaModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: SamaTransformer, directory: Path) -> Path:
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(SamaTransformer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        module.export(tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_tampered_weights_are_refused_before_loading(export: Path) -> None:
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="model.safetensors: checksum differs") as error:
        read_export(export)
    assert "\n" not in str(error.value)
    with pytest.raises(ChecksumError):
        load_encoders(export)


_PAYLOADS = {
    "os.system": lambda marker: {"command": f"touch {marker}"},
    "subprocess.Popen": lambda marker: {"args": ["touch", str(marker)]},
    "builtins.eval": lambda marker: {"source": f"open({str(marker)!r}, 'w')"},
    "sama.encoders.Path": lambda marker: {},  # imported by sama.encoders, not defined there
    "sama.encoders.torch": lambda marker: {},
}


@pytest.mark.parametrize("class_path", sorted(_PAYLOADS))
def test_untrusted_encoder_classes_are_refused_before_anything_runs(
    export: Path, tmp_path: Path, class_path: str
) -> None:
    marker = tmp_path / "pwned"
    args = _PAYLOADS[class_path](marker)
    _rewrite_encoders(export, codec={"class_path": class_path, "init_args": args})
    for read in (read_export, load_encoders, read_inference):
        with pytest.raises(ValueError, match="field 'codec'.class_path") as error:
            read(export)
        message = str(error.value)
        assert "\n" not in message and ENCODERS_FILE in message and class_path in message
    assert not marker.exists()


def test_a_module_outside_the_allowed_ones_is_never_imported(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil_codec.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Codec:\n    def encode(self, v): return v\n"
        "    def decode(self, v): return v\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _rewrite_encoders(export, codec={"class_path": "evil_codec.Codec", "init_args": {}})
    with pytest.raises(ValueError, match="refusing to load"):
        read_export(export)
    assert not marker.exists() and "evil_codec" not in sys.modules


def test_an_encoder_in_the_wrong_role_is_refused(export: Path) -> None:
    text = {"class_path": "sama.encoders.RandomTextEncoder", "init_args": {"dim": 32}}
    _rewrite_encoders(export, codec=text)
    with pytest.raises(ValueError, match="is not a codec"):
        read_export(export)
    with pytest.raises(ValueError, match="cannot build PixelCodec"):
        build_encoder({"class_path": "sama.encoders.PixelCodec", "init_args": {"x": 1}}, "codec")


def test_an_entry_point_encoder_is_accepted(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site"
    (package / "my_codecs-0.1.dist-info").mkdir(parents=True)
    (package / "my_codecs-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: my-codecs\nVersion: 0.1\n"
    )
    (package / "my_codecs-0.1.dist-info" / "entry_points.txt").write_text(
        "[sama.encoders]\nhalf_pixel = my_codecs:HalfPixelCodec\n"
    )
    (package / "my_codecs.py").write_text(
        "from sama.encoders import PixelCodec\n\nclass HalfPixelCodec(PixelCodec):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(package))
    spec = {"class_path": "my_codecs:HalfPixelCodec", "init_args": {"spatial_factor": 4}}
    _rewrite_encoders(export, codec=spec)
    loaded = read_export(export)
    assert type(loaded.codec).__name__ == "HalfPixelCodec"
    assert loaded.codec.latent_channels == 48


def test_the_shipped_tiny_editor_reads_with_derived_inference_fields() -> None:
    spec = json.loads((TINY_EDITOR / ENCODERS_FILE).read_text())
    assert "semantic_tokens_per_frame" not in spec  # an export of the first format
    info = read_inference(TINY_EDITOR)
    # PooledPixelSemanticEncoder(grid=8): 8*8 + 1 tokens per anchor frame, released defaults
    assert info == InferenceInfo(anchor_frames=1, semantic_tokens_per_frame=65)
    assert info.semantic_tokens == 65


def test_the_shipped_real_footage_editor_is_complete_checksummed_and_small() -> None:
    assert set(verify_checksums(REAL_EDITOR)) == {
        "encoders.json",
        "model.safetensors",
        "sama_config.json",
        "summary.json",
    }
    assert sum(p.stat().st_size for p in REAL_EDITOR.iterdir()) <= 20 * 2**20  # issue 16's cap
    codec = json.loads((REAL_EDITOR / ENCODERS_FILE).read_text())["codec"]
    assert codec == {"class_path": "sama.encoders.DCTCodec", "init_args": {"luma": 32, "chroma": 8}}
    summary = json.loads((REAL_EDITOR / "summary.json").read_text())
    assert summary["complete"] and summary["steps"] == summary["max_steps"]
    assert summary["recipe"] == [
        "configs/tiny/real-editor-pretrain.yaml",
        "configs/tiny/real-editor-sft.yaml",
    ]


def test_reading_an_export_imports_no_training_code(tmp_path: Path) -> None:
    copy = tmp_path / "tiny-editor"
    shutil.copytree(TINY_EDITOR, copy)
    code = (
        "import sys\n"
        "import sama.export\n"
        f"loaded = sama.export.read_export({str(copy)!r})\n"
        "assert loaded.inference.semantic_tokens == 65\n"
        "assert 'sama.module' not in sys.modules and 'tasks' not in sys.modules, 'training'\n"
        "assert 'datamodules' not in sys.modules, 'datamodules'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_export_of_a_module_built_from_objects_reads_init_args_back(
    module: SamaModule, tmp_path: Path
) -> None:
    built = SamaModule(
        codec=PixelCodec(4),
        text_encoder=module.encoders.text,
        semantic_encoder=module.encoders.semantic,
        tasks=[CubeInpainting()],
        model=tiny_model_config()["model"],
    )
    assert "codec" not in built.hparams and "tasks" not in built.hparams
    assert describe(built.encoders.codec) == {
        "class_path": "sama.encoders.PixelCodec",
        "init_args": {"spatial_factor": 4, "temporal_factor": 1},
    }
    # PooledPixelSemanticEncoder keeps no `seed` attribute: guessing it would rebuild another
    # encoder, so export refuses and says how to get a describable module.
    with pytest.raises(ValueError, match="'seed'.*from_config"):
        built.export(tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_write_export_refuses_an_untrusted_encoder(module: SamaModule, tmp_path: Path) -> None:
    class LocalCodec(PixelCodec):
        pass

    encoders = module.encoders._replace(codec=LocalCodec(4))
    with pytest.raises(ValueError, match="refusing to load"):
        write_export(tmp_path / "export", module.model, encoders, InferenceInfo())
    assert not (tmp_path / "export").exists()
