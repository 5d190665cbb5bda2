"""The VC checkpoint: one safetensors file with every part of the model, the VAE vocoder and shipped voices.

Weights are stored as float16 and loaded as float32 (feature and latent statistics stay float32).
Metadata (JSON strings): ``config`` (VCConfig with its VAEConfig), ``symbols`` (the content recognizer's
CTC classes) and ``voices`` ({voice_id: description}); the tensor ``voices.<id>`` is that voice's reference log-mel
(frames, num_mels; ``CausalMel.reference``, not normalised), so the speaker encoder embeds shipped and
uploaded references the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.audio.pitch_track import median_pitch
from models.checkpoint_io import load_tensors, save_tensors, strip_prefix
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
    """Write the checkpoint (refs: {voice_id: {"audio": 16 kHz float array, "info": {...}}}); returns bytes.

    Each voice's info gains ``f0_hz``, its median pitch (a harmonic vocoder moves the speaker's there).
    """
    tensors = dict(model.state_dict())
    info = {}
    with torch.no_grad():
        for voice_id, ref in refs.items():
            audio = torch.from_numpy(np.asarray(ref["audio"], dtype=np.float32))[None]
            tensors[f"voices.{voice_id}"] = model.mel.reference(audio)[0]
            info[voice_id] = {**ref["info"], "f0_hz": round(median_pitch(ref["audio"]), 1)}
    meta = {"config": model.cfg.to_dict(), "symbols": symbols, "voices": info}
    return save_tensors(path, tensors, meta, float32_suffixes=FLOAT32_KEYS)


def load_checkpoint(path: str, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    tensors, meta = load_tensors(path)
    model = VCModel(VCConfig.from_dict(meta["config"]))
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("voices.")})
    voice_mels = {k: v.to(device) for k, v in strip_prefix(tensors, "voices.").items()}
    return Checkpoint(model.to(device).eval(), meta["symbols"], voice_mels, meta["voices"])
