"""Tiny seeded TTS checkpoints and an offline reference synthesizer for the TTS tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.audio.vae import VAEConfig, WaveformVAE
from models.speech_text import phonemize
from models.tts.checkpoint import save_checkpoint
from models.tts.generator import TTSGenerator
from models.tts.model import TTSConfig, TTSModel


def _espeak_available() -> bool:
    try:
        phonemize("ok")
    except RuntimeError:
        return False
    return True


requires_espeak = pytest.mark.skipif(not _espeak_available(), reason="espeak-ng is not installed (make install)")

PHONEMES = ["<pad>", "<unk>", "|", ",", ".", "?", "!", "'", "%", "@", "a", "aI", "d", "E", "h", "I", "i:", "k", "l",
            "n", "oU", "r", "s", "t", "u:", "w", "z", "3:", "D", "m", "eI", "V", "O:", "A:", "f", "b", "p", "v"]


def tiny_config(harmonic: bool = False) -> TTSConfig:
    """With ``harmonic``: the harmonic-plus-noise decoder driven by its own pitch head (10 ms delay)."""
    extra = {"synth_window": 320, "harmonics": 40, "pitch_head": 16} if harmonic else {}
    vae = VAEConfig(latent_dim=8, enc_channels=32, dec_channels=32, dec_up_channels=(32, 32), dec_blocks=2, **extra)
    return TTSConfig(vocab_size=len(PHONEMES), dim=32, num_layers=2, num_heads=2, ffn_hidden=48, latent_dim=8,
                     head_width=32, head_blocks=2, flow_steps=3, cfg_scale=2.0, window=160, frames_per_phoneme=0.5,
                     vae=vae)


def make_tiny_checkpoint(path: str, seed: int = 0, never_stop: bool = True, harmonic: bool = False) -> str:
    """A random tiny model; with ``never_stop`` every segment runs to its latent cap (deterministic length)."""
    torch.manual_seed(seed)
    cfg = tiny_config(harmonic)
    model, vae = TTSModel(cfg), WaveformVAE(cfg.vae)
    if harmonic:  # a pitch head that calls some frames voiced, at pitches that move
        with torch.no_grad():
            vae.pitch_head[-1].weight.mul_(torch.tensor([3.0, 30.0])[:, None, None])  # voicing: decided (few near 0.5)
            vae.pitch_head[-1].bias.copy_(torch.tensor([5.0, 0.0]))
    for p in model.head.mod.parameters():  # adaLN-zero init makes the head output constant: randomize it
        torch.nn.init.normal_(p, std=0.05)
    if never_stop:
        torch.nn.init.constant_(model.stop.bias, -30.0)
    voices = {"v000": torch.randn(16), "v001": torch.randn(16)}
    info = {"v000": {"language": "en-us", "espeak_voice": "en-us+m1"},
            "v001": {"language": "en-gb", "espeak_voice": "en-gb+f1"}}
    save_checkpoint(path, model, vae, torch.randn(8) * 0.1, PHONEMES, voices, info)
    return path


def run_session(gen: TTSGenerator, events: list, params: dict | None = None, max_steps: int = 400) -> np.ndarray:
    """Open a session, apply events, step it alone until idle; returns the audio."""
    from models.base import ControlEvent, StepInput

    state = gen.open_session(gen.validate_params(params or {"seed": 3}))
    for kind, payload in events:
        gen.handle_event(state, ControlEvent(kind, payload))
    chunks = []
    for _ in range(max_steps):
        out = gen.step([state], [StepInput()], 1)[0]
        if out.idle:
            break
        chunks.append(out.audio)
    gen.close_session(state)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


@torch.no_grad()
def offline_reference(gen: TTSGenerator, text: str, seed: int, voice: str = "v000") -> np.ndarray:
    """The same speech from full causal passes (no KV cache) and one whole-stream VAE decode.

    Mirrors the generator's slot schedule: per chunk of K latent slots, a slot starts the next segment if
    none runs, a stop (or the cap) leaves the slot silent; idle once nothing runs or waits at a chunk start.
    """
    model, vae, cfg = gen.model, gen.vae, gen.cfg
    rng = torch.Generator().manual_seed(seed)
    speaker = gen.voice_stats[voice][None]
    from models.speech_text import TextSegmenter, normalize_text

    seg = TextSegmenter(gen.max_words)
    queue = [gen.vocab.encode(phonemize(normalize_text(s), gen.voice_info[voice]["language"]))
             for s in seg.push(text) + seg.flush()]
    slots: list[torch.Tensor] = []
    running, lat, ids = False, [], []
    while running or queue:
        for _ in range(gen.chunk_latents):
            if not running and queue:
                ids, lat, running = queue.pop(0), [], True
            if not running:
                slots.append(gen.silence)
                continue
            ph = torch.tensor([ids])
            z = torch.stack(lat)[None] if lat else torch.zeros(1, 0, cfg.latent_dim)
            h, _ = model(speaker, ph, torch.tensor([len(ids)]), z)
            noise = torch.randn(cfg.latent_dim, generator=rng)[None]
            stop, sample = model.sample_next(h[:, -1], noise)
            if float(stop[0]) > 0.5 or len(lat) >= cfg.max_latents(len(ids)):
                running = False
                slots.append(gen.silence)
            else:
                lat.append(sample[0])
                slots.append(sample[0])
    stream = vae.denormalize(torch.stack(slots).T[None])  # (1, D, N)
    context = gen.silence_raw[None, :, None].expand(1, -1, vae.context_latents)
    audio = vae.decode(torch.cat([context, stream], dim=2))[0, vae.context_latents * cfg.vae.hop :]
    return audio.clamp(-1, 1).numpy()
