"""The TTS checkpoint: one safetensors file with the AR model, flow head, VAE, voice table and vocabulary.

Weights are stored as float16 (the default model is ~7M parameters: 14 MB instead of 28 MB) and loaded
as float32. Metadata (JSON strings): ``config`` (TTSConfig with its VAEConfig), ``phonemes`` (the
vocabulary's symbols in id order) and ``voices`` ({voice_id: {language, espeak_voice}}); the tensor
``voices.<id>`` is that voice's reference-encoder input, ``vae.silence`` the latent of silence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.audio.vae import WaveformVAE
from models.checkpoint_io import load_tensors, save_tensors, strip_prefix
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
    meta = {"config": model.cfg.to_dict(), "phonemes": phonemes, "voices": voice_info}
    # latent statistics stay float32: they scale every latent
    return save_tensors(path, tensors, meta, float32_suffixes=("vae.latent_mean", "vae.latent_std"))


def load_checkpoint(path: str, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    tensors, meta = load_tensors(path)
    cfg = TTSConfig.from_dict(meta["config"])
    model = TTSModel(cfg)
    model.load_state_dict(strip_prefix(tensors, "model."))
    vae = WaveformVAE(cfg.vae)
    vae.load_state_dict({k: v for k, v in strip_prefix(tensors, "vae.").items() if k != "silence"})
    voice_stats = strip_prefix(tensors, "voices.")
    return Checkpoint(
        model=model.to(device).eval(),
        vae=vae.to(device).eval(),
        silence=tensors["vae.silence"].to(device),
        phonemes=meta["phonemes"],
        voice_stats={k: v.to(device) for k, v in voice_stats.items()},
        voice_info=meta["voices"],
    )
