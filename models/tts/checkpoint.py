"""The TTS checkpoint: one safetensors file with the AR model, flow head, VAE, voice table and vocabulary.

Weights are stored as float16 (the default model is ~7M parameters: 14 MB instead of 28 MB) and loaded
as float32. Metadata (JSON strings): ``config`` (TTSConfig with its VAEConfig), ``phonemes`` (the
vocabulary's symbols in id order) and ``voices`` ({voice_id: {language, espeak_voice}}); the tensor
``voices.<id>`` is that voice's reference-encoder input, ``vae.silence`` the latent of silence.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, safe_open, save_file

from models.audio.vae import WaveformVAE
from models.tts.model import TTSConfig, TTSModel


@dataclass
class Checkpoint:
    """Everything the generator needs, loaded."""

    model: TTSModel
    vae: WaveformVAE
    silence: torch.Tensor  # (latent_dim,) un-normalised latent of silence
    phonemes: list[str]
    voice_stats: dict[str, torch.Tensor]  # voice id -> (2 * latent_dim,)
    voice_info: dict[str, dict]


def save_checkpoint(
    path: str,
    model: TTSModel,
    vae: WaveformVAE,
    silence: torch.Tensor,
    phonemes: list[str],
    voice_stats: dict[str, torch.Tensor],
    voice_info: dict[str, dict],
) -> int:
    """Write the checkpoint; returns its size in bytes."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"vae.{k}": v for k, v in vae.state_dict().items()}
    tensors["vae.silence"] = silence
    tensors |= {f"voices.{k}": v for k, v in voice_stats.items()}
    tensors = {
        k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in tensors.items()
    }
    # latent statistics stay float32: they scale every latent
    for key in ("vae.latent_mean", "vae.latent_std"):
        tensors[key] = vae.state_dict()[key.removeprefix("vae.")].float().contiguous()
    meta = {
        "config": json.dumps(model.cfg.to_dict()),
        "phonemes": json.dumps(phonemes),
        "voices": json.dumps(voice_info),
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(tensors, path, metadata=meta)
    return os.path.getsize(path)


def load_checkpoint(path: str, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = {k: v.float() for k, v in load_file(path, device="cpu").items()}
    cfg = TTSConfig.from_dict(json.loads(meta["config"]))
    model = TTSModel(cfg)
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    vae = WaveformVAE(cfg.vae)
    vae_state = {k.removeprefix("vae."): v for k, v in tensors.items() if k.startswith("vae.") and k != "vae.silence"}
    vae.load_state_dict(vae_state)
    voice_stats = {k.removeprefix("voices."): v for k, v in tensors.items() if k.startswith("voices.")}
    return Checkpoint(
        model=model.to(device).eval(),
        vae=vae.to(device).eval(),
        silence=tensors["vae.silence"].to(device),
        phonemes=json.loads(meta["phonemes"]),
        voice_stats={k: v.to(device) for k, v in voice_stats.items()},
        voice_info=json.loads(meta["voices"]),
    )
