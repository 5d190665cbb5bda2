"""The VC generator's per-session state as rows of preallocated tensors (row = slot, like the KV cache).

One row per session slot plus one scratch row for the padding of a batch bucket. Everything a session carries
from chunk to chunk that is a tensor lives here, so a batch step reads and writes its rows with one index and
nothing grows with stream length: the content encoder's front-end state, the reference (speaker vector, its
per-flow-time modulations, timbre keys/values and mask), the last window of clean latents and content, and for
a harmonic vocoder the pitch tracker's tail and the pitch-mapping statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.vc.model import VCConfig


@dataclass
class VCSlots:
    """Per-slot tensors of the VC generator (first dim: rows; ``gru``'s second)."""

    tail: torch.Tensor  # (rows, mel tail) the last input samples the next chunk's mel frames need
    conv1: torch.Tensor  # (rows, k1 - 1, mels) content encoder conv 1's past frames, time-major
    conv2: torch.Tensor  # (rows, k2 - stride2, channels) conv 2's past frames
    gru: torch.Tensor  # (layers, rows, channels) the content GRU's hidden state
    speaker: torch.Tensor  # (rows, dim) the reference's speaker vector
    mods: torch.Tensor  # (rows, flow-time pairs, mods, dim) the DiT's adaLN modulations per (r, t) pair
    timbre: torch.Tensor  # (rows, depth, 2, heads, ref tokens, head dim) the reference's timbre keys/values
    timbre_mask: torch.Tensor  # (rows, ref tokens) which timbre tokens are real
    recent: torch.Tensor  # (rows, window, latent + content) the last window's clean latents and content
    pitch_tail: torch.Tensor | None = None  # (rows, window - hop) the pitch tracker's input tail (harmonic)
    f0_stats: torch.Tensor | None = None  # (rows, 3) the speaker's sum of log f0, voiced count, last output f0
    target_log_f0: torch.Tensor | None = None  # (rows,) the reference's median log f0
    # (rows, 2, frames) the tracker's newest f0 and voicing frames, not yet due: with a content lookahead the
    # latents decoded lag the mic by that many latent frames, and their pitch must lag with them
    pitch_delay: torch.Tensor | None = None

    @classmethod
    def allocate(cls, cfg: VCConfig, num_rows: int, *, mel_tail: int, conv1_past: int, conv2_past: int,
                 num_pairs: int, num_mods: int, num_ref_tokens: int, pitch_tail: int | None,
                 device: torch.device, pitch_delay: int = 0) -> VCSlots:
        """Zeroed rows; ``pitch_tail`` None: no harmonic vocoder (no pitch rows); ``pitch_delay``: frames held back."""
        heads, head_dim = cfg.num_heads, cfg.dim // cfg.num_heads
        per = cfg.content_per_latent * cfg.content_dim

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        harmonic = pitch_tail is not None
        return cls(
            tail=zeros(num_rows, mel_tail),
            conv1=zeros(num_rows, conv1_past, cfg.num_mels),
            conv2=zeros(num_rows, conv2_past, cfg.content_channels),
            gru=zeros(cfg.content_layers, num_rows, cfg.content_channels),
            speaker=zeros(num_rows, cfg.dim),
            mods=zeros(num_rows, num_pairs, num_mods, cfg.dim),
            timbre=zeros(num_rows, cfg.depth, 2, heads, num_ref_tokens, head_dim),
            timbre_mask=zeros(num_rows, num_ref_tokens, dtype=torch.bool),
            recent=zeros(num_rows, cfg.window_latents, cfg.vae.latent_dim + per),
            pitch_tail=zeros(num_rows, pitch_tail) if harmonic else None,
            f0_stats=zeros(num_rows, 3) if harmonic else None,
            target_log_f0=zeros(num_rows) if harmonic else None,
            pitch_delay=zeros(num_rows, 2, pitch_delay) if harmonic and pitch_delay else None,
        )

    def reset_stream(self, slot: int) -> None:
        """Start a slot's stream afresh: no input heard yet (the reference rows are set separately)."""
        for t in (self.tail, self.conv1, self.conv2, self.recent):
            t[slot] = 0
        self.gru[:, slot] = 0
        if self.pitch_tail is not None:
            self.pitch_tail[slot] = 0
        if self.pitch_delay is not None:
            self.pitch_delay[slot] = 0  # unvoiced: the pitch holds the target's until the speaker is heard
