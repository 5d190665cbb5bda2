"""Where the TTS model's two hot functions run: PyTorch, or onnxruntime from exported graphs.

Both backends expose the same two calls, with torch tensors in and out:

- ``ar(x, positions, k_cache, v_cache, mask) -> (hidden, new_k, new_v)``: :meth:`TTSModel.step_core`;
- ``sample(hidden, noise) -> (stop_prob, latent)``: stop head + flow-head Euler sampling with CFG
  (:meth:`TTSModel.sample_next`), the whole loop unrolled into one graph.

Embeddings, the KV-cache bookkeeping and the VAE decoder stay in PyTorch; the two functions above are
where the per-latent compute is.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from torch import nn

from models.tts.model import TTSModel


class TorchBackend:
    """Calls the model directly."""

    name = "torch"

    def __init__(self, model: TTSModel) -> None:
        self.model = model

    def ar(self, x, positions, k_cache, v_cache, mask):
        """See module docstring."""
        return self.model.step_core(x, positions, k_cache, v_cache, mask)

    def sample(self, hidden, noise):
        """See module docstring."""
        return self.model.sample_next(hidden, noise)


class _ARStep(nn.Module):
    def __init__(self, model: TTSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, positions, k_cache, v_cache, mask):
        return self.model.step_core(x, positions, k_cache, v_cache, mask)


class _Sampler(nn.Module):
    def __init__(self, model: TTSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden, noise):
        return self.model.sample_next(hidden, noise)


def export_onnx(model: TTSModel, out_dir: str, cache_len: int = 8) -> tuple[str, str]:
    """Export ``ar_step.onnx`` and ``sampler.onnx`` into out_dir (dynamic batch, token and cache axes)."""
    cfg = model.cfg
    heads, head_dim = cfg.num_heads, cfg.dim // cfg.num_heads
    b, t = 2, 3
    x = torch.randn(b, t, cfg.dim)
    positions = torch.arange(t)[None].expand(b, t).contiguous()
    k = torch.randn(cfg.num_layers, b, cache_len, heads, head_dim)
    mask = torch.ones(b, 1, t, cache_len + t, dtype=torch.bool)
    ar_path, sampler_path = os.path.join(out_dir, "ar_step.onnx"), os.path.join(out_dir, "sampler.onnx")
    torch.onnx.export(
        _ARStep(model).eval(), (x, positions, k, k.clone(), mask), ar_path, dynamo=False,
        input_names=["x", "positions", "k_cache", "v_cache", "mask"], output_names=["hidden", "new_k", "new_v"],
        dynamic_axes={
            "x": {0: "batch", 1: "tokens"}, "positions": {0: "batch", 1: "tokens"},
            "k_cache": {1: "batch", 2: "cache"}, "v_cache": {1: "batch", 2: "cache"},
            "mask": {0: "batch", 2: "tokens", 3: "keys"}, "hidden": {0: "batch", 1: "tokens"},
            "new_k": {1: "batch", 2: "tokens"}, "new_v": {1: "batch", 2: "tokens"},
        },
        opset_version=17,
    )
    torch.onnx.export(
        _Sampler(model).eval(), (torch.randn(b, cfg.dim), torch.randn(b, cfg.latent_dim)), sampler_path, dynamo=False,
        input_names=["hidden", "noise"], output_names=["stop", "latent"],
        dynamic_axes={"hidden": {0: "batch"}, "noise": {0: "batch"}, "stop": {0: "batch"}, "latent": {0: "batch"}},
        opset_version=17,
    )
    return ar_path, sampler_path


class OnnxBackend:
    """Runs the exported graphs with onnxruntime on the CPU (exported on construction into a temp dir)."""

    name = "onnx"

    def __init__(self, model: TTSModel, num_threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        with tempfile.TemporaryDirectory() as tmp:
            ar_path, sampler_path = export_onnx(model, tmp)
            self._ar = ort.InferenceSession(ar_path, opts, providers=["CPUExecutionProvider"])
            self._sampler = ort.InferenceSession(sampler_path, opts, providers=["CPUExecutionProvider"])

    def ar(self, x, positions, k_cache, v_cache, mask):
        """See module docstring."""
        feeds = {"x": x, "positions": positions, "k_cache": k_cache, "v_cache": v_cache, "mask": mask}
        hidden, new_k, new_v = self._ar.run(None, {k: _np(v) for k, v in feeds.items()})
        return torch.from_numpy(hidden), torch.from_numpy(new_k), torch.from_numpy(new_v)

    def sample(self, hidden, noise):
        """See module docstring."""
        stop, latent = self._sampler.run(None, {"hidden": _np(hidden), "noise": _np(noise)})
        return torch.from_numpy(stop), torch.from_numpy(latent)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def make_backend(name: str, model: TTSModel, num_threads: int = 1) -> TorchBackend | OnnxBackend:
    """``torch`` or ``onnx``; raises ValueError for anything else."""
    if name == "torch":
        return TorchBackend(model)
    if name == "onnx":
        return OnnxBackend(model, num_threads)
    raise ValueError(f"unknown backend {name!r}; use 'torch' or 'onnx'")
