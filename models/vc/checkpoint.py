"""The VC checkpoint: one safetensors file with every part of the model, the VAE vocoder and shipped voices.

Weights are stored as float16 and loaded as float32 (feature and latent statistics stay float32).
Metadata (JSON strings): ``config`` (VCConfig with its VAEConfig), ``symbols`` (the content recognizer's
CTC classes) and ``voices`` ({voice_id: description}); the tensor ``voices.<id>`` is that voice's reference log-mel
(frames, num_mels; ``CausalMel.reference``, not normalised), so the speaker encoder embeds shipped and
uploaded references the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file

from models.vc.model import VCConfig, VCModel

FLOAT32_KEYS = ("mel.mean", "mel.std", "vae.latent_mean", "vae.latent_std")


@dataclass
class Checkpoint:
    """Everything the generator needs, loaded."""

    model: VCModel
    symbols: list[str]
    voice_mels: dict[str, torch.Tensor]  # voice id -> (frames, num_mels) reference log-mel
    voice_info: dict[str, dict]


def save_checkpoint(path: str, model: VCModel, symbols: list[str], refs: dict[str, dict]) -> int:
    """Write the checkpoint (refs: {voice_id: {"audio": 16 kHz float array, "info": {...}}}); returns bytes."""
    state = model.state_dict()
    tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype) for k, v in state.items()}
    for key in FLOAT32_KEYS:
        tensors[key] = state[key].float()
    with torch.no_grad():
        for voice_id, ref in refs.items():
            audio = torch.from_numpy(np.asarray(ref["audio"], dtype=np.float32))[None]
            tensors[f"voices.{voice_id}"] = model.mel.reference(audio)[0].half()
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {
        "config": json.dumps(model.cfg.to_dict()),
        "symbols": json.dumps(symbols),
        "voices": json.dumps({k: r["info"] for k, r in refs.items()}),
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(tensors, path, metadata=meta)
    return os.path.getsize(path)


def load_checkpoint(path: str, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = {k: v.float() for k, v in load_file(path, device="cpu").items()}
    model = VCModel(VCConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("voices.")})
    voice_mels = {k.removeprefix("voices."): v.to(device) for k, v in tensors.items() if k.startswith("voices.")}
    return Checkpoint(model.to(device).eval(), json.loads(meta["symbols"]), voice_mels, json.loads(meta["voices"]))
