"""A Pocket TTS release in our modules: weights through the key-mapping loader, and voices.

A voice is the flow LM's keys/values after the voice prefix ([BOS_voice ; projected Mimi latents of a clip]),
computed once and copied into a session's cache slot at the start of every chunk. It comes from a reference
clip (the voice-cloning variant: Mimi's encoder and ``speaker_proj_weight``) or from a voice file the release
ships (``embeddings/NAME.safetensors``: the package's exported streaming state, one ``cache`` per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.errors import WeightsError
from models.tts.pocket.config import PocketConfig
from models.tts.pocket.mimi import Mimi
from models.tts.pocket.model import FlowLM, attention_layers
from models.weights import load_mapped, read_tensors

# Parts only the voice-cloning variant needs: a release without them serves its shipped voices only.
CLONING_PREFIXES = ("mimi.encoder.", "mimi.encoder_transformer.", "mimi.downsample.", "flow_lm.speaker_proj_weight")


@dataclass
class Voice:
    """A voice prompt's keys/values per layer, (L, P, H_kv, D) each."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def num_frames(self) -> int:
        """Positions the prompt occupies in the sequence."""
        return self.k.shape[1]


class PocketTTS(nn.Module):
    """The release's two top modules, named as in its state dict (``flow_lm.*``, ``mimi.*``)."""

    def __init__(self, cfg: PocketConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.flow_lm = FlowLM(cfg)
        self.mimi = Mimi(cfg)
        self.has_voice_cloning = True

    def load_release(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Fill every parameter from the release's tensors (every tensor consumed; faults name the keys).

        A release without the cloning parts (encoder, speaker projection) loads too, and then refuses
        reference clips.
        """
        self.has_voice_cloning = any(k.startswith(CLONING_PREFIXES[0]) for k in tensors)
        if self.has_voice_cloning:
            load_mapped(self, tensors, lambda key: key, source=source)
            return
        load_mapped(self, tensors, lambda key: key, source=source, strict_missing=False)
        missing = [k for k in self.state_dict() if k not in tensors and not k.startswith(CLONING_PREFIXES)]
        if missing:
            raise WeightsError(f"{source}: missing keys: {', '.join(missing[:10])}")

    @torch.no_grad()
    def voice_from_audio(self, audio: torch.Tensor) -> Voice:
        """Voice of a mono clip (T,) at the model's rate: ends it on a pause, encodes it, runs the prefix."""
        if not self.has_voice_cloning:
            raise ValueError("these weights have no voice cloning (the gated variant adds it); use a named voice")
        audio = end_on_pause(audio.float(), self.cfg.sample_rate_hz)
        latents = self.mimi.encode(audio[None, None])  # (1, N, D)
        return self.voice_from_prefix(self.flow_lm.voice_prefix(latents))

    @torch.no_grad()
    def voice_from_prefix(self, prefix: torch.Tensor) -> Voice:
        """Voice of backbone inputs (1, P, C)."""
        kvs: list[tuple[torch.Tensor, torch.Tensor]] = []
        positions = torch.arange(prefix.shape[1], device=prefix.device)[None]
        attention_layers(self.flow_lm.transformer, prefix, positions, kv_out=kvs)
        return Voice(torch.stack([k[0] for k, _ in kvs]), torch.stack([v[0] for _, v in kvs]))


def voice_from_state_file(path: Path, num_layers: int) -> Voice:
    """A shipped voice: the package's exported state (``transformer.layers.N.self_attn/cache`` (2, 1, P, H, D))."""
    tensors = read_tensors(path)
    ks, vs = [], []
    for layer in range(num_layers):
        key = f"transformer.layers.{layer}.self_attn/cache"
        if key not in tensors:
            raise WeightsError(f"{path}: missing key {key!r} (not a Pocket TTS voice state)")
        cache = tensors[key]
        end = _state_length(tensors, layer, cache)
        ks.append(cache[0, 0, :end])
        vs.append(cache[1, 0, :end])
    return Voice(torch.stack(ks).float(), torch.stack(vs).float())


def _state_length(tensors: dict[str, torch.Tensor], layer: int, cache: torch.Tensor) -> int:
    """Filled positions: the state's offset (or older files' ``current_end`` length), else the cache length."""
    prefix = f"transformer.layers.{layer}.self_attn/"
    if prefix + "offset" in tensors:
        return int(tensors[prefix + "offset"].view(-1)[0])
    if prefix + "current_end" in tensors:
        return int(tensors[prefix + "current_end"].shape[0])
    return cache.shape[2]


def end_on_pause(audio: torch.Tensor, sample_rate_hz: int, pause_s: float = 0.08, fade_s: float = 0.02,
                 floor_db: float = 35.0) -> torch.Tensor:
    """End a clip (T,) on ``pause_s`` of silence, as training prompts do (the release's prompt rule).

    Trailing 20 ms frames more than ``floor_db`` below the loudest are cut, the last ``fade_s`` faded out,
    then zeros appended: a prompt ending on speech makes the model continue that utterance.
    """
    frame = max(1, int(0.02 * sample_rate_hz))
    n = audio.shape[-1] // frame
    if n == 0:
        return audio
    rms = audio[: n * frame].reshape(n, frame).square().mean(dim=1).sqrt()
    level_db = 20 * torch.log10(rms + 1e-12)
    loud = torch.nonzero(level_db > level_db.max() - floor_db).flatten()
    end = (int(loud[-1]) + 1) * frame
    audio = audio[:end].clone()
    fade = min(int(fade_s * sample_rate_hz), end)
    audio[end - fade:] *= torch.linspace(1, 0, fade, dtype=audio.dtype, device=audio.device)
    return torch.cat([audio, audio.new_zeros(int(pause_s * sample_rate_hz))])
