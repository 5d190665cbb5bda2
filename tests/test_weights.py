"""Published-weights plumbing (models/weights.py, `causalcast weights`): a fake release, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models import weights
from models.errors import WeightsError
from models.registry import load_model
from models.weights import HubFile, PublishedModel, check_shapes, load_mapped
from streaming.cli import main as cli_main


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)


def _published_names(key: str) -> str | None:
    # the "published" naming: net.linear.* -> proj.*; "step" counters are dropped
    return None if key == "step" else key.replace("net.linear.", "proj.")


def _check(folder: Path) -> list[str]:
    return check_shapes(folder / "model.safetensors", {"net.linear.weight": (2, 3), "net.linear.bias": (2,),
                                                       "step": None}, dtypes=("F32", "I64"))


def _load(folder: Path, device: str = "cpu", **options):
    from models.diagnostic.pitch import PitchShifter

    gen = PitchShifter(**options)
    tiny = _Tiny()
    load_mapped(tiny, weights.read_tensors(folder / "model.safetensors"), _published_names, source="model.safetensors")
    gen.tiny = tiny
    return gen


FAKE = PublishedModel(
    name="fake",
    family="pitch",
    description="a test release",
    files=(HubFile("org/fake", "model.safetensors", "MIT", approx_bytes=100),),
    check=_check,
    load=_load,
)


@pytest.fixture
def fake_release(monkeypatch):
    real = weights.published_model
    monkeypatch.setattr(weights, "published_model", lambda name: FAKE if name == "fake" else real(name))


def _write(folder: Path, tensors: dict[str, torch.Tensor], manifest: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    if manifest:
        weights.write_manifest(folder, FAKE, {})
    return folder


def _good() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"net.linear.weight": torch.randn(2, 3), "net.linear.bias": torch.randn(2), "step": torch.tensor(3)}


def test_load_mapped_consumes_every_tensor_and_names_faults():
    tiny = _Tiny()
    report = load_mapped(tiny, _good(), _published_names, source="m.safetensors")
    assert sorted(report.loaded) == ["net.linear.bias", "net.linear.weight"] and report.ignored == ["step"]
    assert torch.equal(tiny.proj.weight.data, _good()["net.linear.weight"])

    extra = {**_good(), "net.other.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"m.safetensors: unexpected keys: net.other.weight"):
        load_mapped(_Tiny(), extra, _published_names, source="m.safetensors")
    short = {k: v for k, v in _good().items() if k != "net.linear.bias"}
    with pytest.raises(WeightsError, match=r"missing keys: proj.bias"):
        load_mapped(_Tiny(), short, _published_names, source="m.safetensors")
    wrong = {**_good(), "net.linear.weight": torch.zeros(3, 2)}
    with pytest.raises(WeightsError, match=r"wrong shape keys: net.linear.weight: \[3, 2\] vs ours proj.weight"):
        load_mapped(_Tiny(), wrong, _published_names, source="m.safetensors")


def test_header_check_names_file_and_key(tmp_path):
    folder = _write(tmp_path / "w", {**_good(), "net.linear.bias": torch.zeros(5)})
    assert _check(folder) == [f"{folder / 'model.safetensors'}: 'net.linear.bias' has shape [5], expected [2]"]
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-8])
    (problem,) = _check(folder)
    assert "model.safetensors: not a valid safetensors file" in problem and "truncated" in problem


def test_manifest_records_sizes_and_hashes(tmp_path):
    folder = _write(tmp_path / "w", _good())
    manifest = json.loads((folder / weights.MANIFEST).read_text())
    entry = manifest["files"]["model.safetensors"]
    assert manifest["model"] == "fake" and entry["license"] == "MIT"
    assert entry["sha256"] == weights.sha256_file(folder / "model.safetensors")
    assert entry["bytes"] == (folder / "model.safetensors").stat().st_size


def test_serving_a_release_and_refusing_bad_ones(tmp_path, fake_release):
    good = _write(tmp_path / "good", _good())
    gen = load_model("pitch", "cpu", {"weights": str(good)})
    described = gen.describe()["weights"]
    assert described["name"] == "fake" and len(described["files"]["model.safetensors"]["sha256"]) == 64
    assert torch.equal(gen.tiny.proj.bias.data, _good()["net.linear.bias"])

    with pytest.raises(WeightsError, match="does not exist"):
        load_model("pitch", "cpu", {"weights": str(tmp_path / "nowhere")})
    with pytest.raises(WeightsError, match="a 'pitch' model, not 'vc'"):
        load_model("vc", "cpu", {"weights": str(good)})
    bad = _write(tmp_path / "bad", {**_good(), "net.linear.weight": torch.zeros(4, 4)})
    with pytest.raises(WeightsError, match=r"'net.linear.weight' has shape \[4, 4\], expected \[2, 3\]"):
        load_model("pitch", "cpu", {"weights": str(bad)})
    (good / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(WeightsError, match=r"model.safetensors: .*bytes, manifest says"):
        load_model("pitch", "cpu", {"weights": str(good)})
    # a hand-filled folder (no manifest) names the release
    hand = _write(tmp_path / "hand", _good(), manifest=False)
    with pytest.raises(WeightsError, match="has no causalcast-weights.json"):
        load_model("pitch", "cpu", {"weights": str(hand)})
    assert load_model("pitch", "cpu", {"weights": str(hand), "published": "fake"}).published_weights["name"] == "fake"


def test_cli_check_and_list(tmp_path, fake_release, capsys):
    good = _write(tmp_path / "good", _good())
    assert cli_main(["weights", "check", str(good), "--hashes"]) == 0
    assert "ok" in capsys.readouterr().out
    (good / "model.safetensors").unlink()
    assert cli_main(["weights", "check", str(good)]) == 1
    assert "model.safetensors: missing" in capsys.readouterr().err
    assert cli_main(["weights", "check", str(tmp_path / "none")]) == 2
    assert cli_main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    for name in weights.PUBLISHED:
        assert name in listed


def test_serve_refuses_to_start_on_bad_weights(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / weights.MANIFEST).write_text(json.dumps({"model": "nonexistent", "files": {}}))
    rc = cli_main(["serve", "--port", "0", "--models", f"pitch:weights={folder}"])
    assert rc == 2
    assert "unknown published weights 'nonexistent'" in capsys.readouterr().err


def test_torch_archive_header_reads_names_without_running_anything(tmp_path, capsys):
    import pickle
    import zipfile

    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2)))
    module.save(str(tmp_path / "m.pt"))
    header = weights.torch_archive_header(tmp_path / "m.pt")
    assert header.torchscript and header.tensors == {"0.weight": ((2, 3), "F32"), "0.bias": ((2,), "F32")}
    torch.save({"model": {"w": torch.zeros(4, dtype=torch.float16)}}, tmp_path / "s.pth")
    header = weights.torch_archive_header(tmp_path / "s.pth")
    assert not header.torchscript and header.tensors == {"model.w": ((4,), "F16")}

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil()))
    assert weights.torch_archive_header(tmp_path / "evil.pth").tensors == {}  # read, and nothing ran
    assert "ran" not in capsys.readouterr().out
    with pytest.raises(WeightsError, match=r"nowhere.pt: missing"):
        weights.torch_archive_header(tmp_path / "nowhere.pt")
