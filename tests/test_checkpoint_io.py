"""The checkpoint file format every family uses: float16 storage with float32 exceptions, JSON metadata."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from models.checkpoint_io import load_tensors, read_metadata, save_tensors, strip_prefix


def test_weights_are_stored_half_statistics_float32_and_metadata_round_trips(tmp_path) -> None:
    tensors = {
        "dit.w": torch.randn(4, 4),
        "ae.latent_mean": torch.randn(3) * 1e4,  # would lose precision (and overflow) in float16
        "ae.steps": torch.arange(3),
    }
    meta = {"config": {"dim": 4, "widths": [1, 2]}, "voices": ["a", "b"]}
    size = save_tensors(tmp_path / "c.safetensors", tensors, meta, float32_suffixes=(".latent_mean",))
    assert size == (tmp_path / "c.safetensors").stat().st_size
    raw = load_file(str(tmp_path / "c.safetensors"))
    assert raw["dit.w"].dtype == torch.float16 and raw["ae.latent_mean"].dtype == torch.float32
    assert raw["ae.steps"].dtype == torch.int64
    loaded, loaded_meta = load_tensors(tmp_path / "c.safetensors")
    assert loaded_meta == meta == read_metadata(tmp_path / "c.safetensors")
    assert loaded["dit.w"].dtype == torch.float32
    torch.testing.assert_close(loaded["dit.w"], tensors["dit.w"], atol=2e-3, rtol=1e-3)
    assert torch.equal(loaded["ae.latent_mean"], tensors["ae.latent_mean"])
    assert set(strip_prefix(loaded, "ae.")) == {"latent_mean", "steps"}
    save_tensors(tmp_path / "full.safetensors", tensors, meta, half=False)
    assert torch.equal(load_tensors(tmp_path / "full.safetensors")[0]["dit.w"], tensors["dit.w"])
