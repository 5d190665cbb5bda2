"""The serving vocoder: a :class:`~models.audio.vae_stream.StreamingDecoder` with one state row per session slot."""

from __future__ import annotations

import torch

from models.audio.vae import WaveformVAE
from models.audio.vae_stream import StreamingDecoder


class SlotVocoder:
    """A :class:`StreamingDecoder` with the decoder state of a fixed set of session rows (the serving vocoder).

    Each row's stream starts as if ``context_latents`` latents of ``silence`` had been decoded before it (the
    left context an offline decode of that stream would see), so a new session's first samples carry no
    start-up transient. The TTS and VC families both decode with it.
    """

    def __init__(self, vae: WaveformVAE, num_rows: int, silence: torch.Tensor,
                 device: torch.device | str = "cpu") -> None:
        self.decoder = StreamingDecoder(vae).to(device)
        before = silence.to(device)[None, None].expand(1, vae.context_latents, -1)  # (1, ctx, D) un-normalised
        f0 = torch.full((1, before.shape[1] * (vae.cfg.hop // vae.cfg.frame_hop)), 100.0, device=device)
        if not vae.cfg.harmonics or vae.pitch_head is not None:
            f0 = None  # (a harmonic decoder's oscillators idle at 100 Hz, silent; with a pitch head, at its pitch)
        with torch.inference_mode():
            start = self.decoder(before, self.decoder.initial_state(1, device), f0)
        self._start = start[1]
        self._state = self.decoder.initial_state(num_rows, device)

    def reset(self, row: int) -> None:
        """Start row ``row``'s stream afresh (after the silence context)."""
        for t, start in zip(self._state, self._start, strict=True):
            t[row] = start[0]

    def decode(self, rows: list[int] | torch.Tensor, latents: torch.Tensor,
               f0: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents (B, K, D) of ``rows`` -> their next (B, K * hop) samples, clamped to [-1, 1].

        A harmonic decoder also takes the frames' pitch, ``f0`` (B, K * frames per latent) (with a pitch head:
        or None, for the predicted pitch).
        """
        state = [s[rows] for s in self._state]
        audio, state = self.decoder(self.decoder.denormalize(latents), state, f0)
        for s, new in zip(self._state, state, strict=True):
            s[rows] = new
        return audio.clamp(-1.0, 1.0)
