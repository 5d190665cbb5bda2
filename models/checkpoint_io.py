"""Checkpoint files of every family: one safetensors file, weights plus JSON metadata.

Shipped checkpoints must stay small, so floating-point tensors are stored as float16 unless a key is
listed to stay float32 (statistics that scale every input or latent lose too much in half precision);
they load back as float32. Every metadata value is JSON (safetensors metadata holds strings only).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    half: bool = True,
    float32_suffixes: tuple[str, ...] = (),
) -> int:
    """Write a checkpoint file; returns its size in bytes.

    Floating tensors are stored as float16 when ``half``, except keys ending in ``float32_suffixes``;
    each ``meta`` value is JSON-encoded.
    """

    def stored(key: str, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.is_floating_point():
            t = t.float() if (not half or key.endswith(float32_suffixes)) else t.half()
        return t.contiguous()

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file({k: stored(k, v) for k, v in tensors.items()}, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    return os.path.getsize(path)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (floating ones as float32, on the CPU) and the decoded metadata of a checkpoint file."""
    path = os.fspath(path)
    meta = read_metadata(path)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path, device="cpu").items()}
    return tensors, meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Only the decoded metadata (cheap: no tensor is read)."""
    with safe_open(os.fspath(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with the prefix removed (one module's state dict)."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
