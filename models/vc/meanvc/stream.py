"""MeanVC's streaming loop, per chunk and batched across sessions: content, DiT, (vocoder in vocos.py).

Design note of one chunk (``src/runtime/run_rt.py``, the published real-time loop, chunk C mel frames of
10 ms; the released model: C = 20):

- *Content* (:class:`ContentStream`): the chunk's samples, with the 720 before them (400 - 160 for the
  25 ms fbank window, plus 2 x 160 for the conformer's 7-frame subsampling context), become 4C/4 + 3 Kaldi
  fbank frames; the published ASR (TorchScript, WeNet's ``forward_encoder_chunk``) encodes them to C/4
  bottleneck frames at 40 ms with its attention and convolution caches (2 chunks of left context), and
  they are interpolated to C mel frames with the previous chunk's last frame as the left end. The ASR
  runs as shipped: its exported chunk interface holds one stream's caches without a batch dimension, so
  it is called once per session of a batch. The 720 samples are the model's look-ahead: at the stream's
  start they are zeros, so every output lags its input by 45 ms.
- *DiT* (:func:`denoise_chunk`): noise through 1 step (t = 1 -> 0) or 2 (1 -> 0.8 -> 0) of the mean flow
  x <- x - (t - r) u(x, t, r), each pass over [previous clean chunk ; noisy chunk] against the ring of
  older clean chunks (``models/cache.py``'s RingKVCache, one slot per session, labels = frame positions);
  the previous chunk's keys/values of the last pass are written to the ring afterwards. The ring holds
  ``lookback + 1`` chunks: the look-back of the previous chunk, and the entries reserved for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.cache import RingKVCache
from models.vc.meanvc.dit import MeanVCDiT
from models.vc.meanvc.features import FBANK_HOP, FBANK_WINDOW, kaldi_fbank, upsample_content

SUBSAMPLING = 4  # fbank frames per content frame
CONTEXT_FBANK_FRAMES = 7  # the conformer's subsampling needs 7 frames for its first output
LOOKAHEAD_SAMPLES = FBANK_WINDOW - FBANK_HOP + (CONTEXT_FBANK_FRAMES - 1 - (SUBSAMPLING - 1)) * FBANK_HOP  # 720
LEFT_CHUNKS = 2  # the ASR's attention cache, in chunks (run_rt.py's num_decoding_left_chunks)
OFFSET_RESET_CHUNKS = 50  # run_rt.py resets the ASR's position offset this often (its positional table is finite)

SCHEDULES = {1: ((1.0, 0.0),), 2: ((1.0, 0.8), (0.8, 0.0))}  # MeanVC's (t, r) per pass


@dataclass
class ContentState:
    """One session's content-model state (sizes bounded by the ASR's left context)."""

    tail: torch.Tensor  # (720,) samples before the next chunk
    att_cache: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0, 0))
    cnn_cache: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0, 0))
    offset: int = 0  # content frames encoded (reset as run_rt.py does)
    num_chunks: int = 0
    last: torch.Tensor | None = None  # (1, 1, bn) the previous chunk's last content frame


class ContentStream:
    """The published ASR (TorchScript) as a chunk-by-chunk content encoder, one session at a time."""

    def __init__(self, asr: torch.jit.ScriptModule, chunk_frames: int, device: torch.device) -> None:
        if chunk_frames % SUBSAMPLING:
            raise ValueError(f"a chunk must be a multiple of {SUBSAMPLING} mel frames (40 ms), got {chunk_frames}")
        self.asr, self.device = asr, device
        self.chunk_frames = chunk_frames
        self.enc_frames = chunk_frames // SUBSAMPLING
        self.required_cache = self.enc_frames * LEFT_CHUNKS
        from models.vc.meanvc.features import kaldi_mel_banks, povey_window

        self.banks, self.window = kaldi_mel_banks().to(device), povey_window().to(device)

    def initial_state(self) -> ContentState:
        """A stream's start: zeros before it."""
        empty = torch.zeros(0, 0, 0, 0, device=self.device)  # WeNet's "no cache yet"
        return ContentState(tail=torch.zeros(LOOKAHEAD_SAMPLES, device=self.device), att_cache=empty, cnn_cache=empty)

    def __call__(self, state: ContentState, audio: torch.Tensor) -> torch.Tensor:
        """One chunk of samples (chunk_frames * 160,) -> content at mel rate (1, chunk_frames, bn)."""
        samples = torch.cat([state.tail, audio])
        state.tail = samples[-LOOKAHEAD_SAMPLES:]
        fbank = kaldi_fbank(samples[None], self.banks, self.window)  # (1, C + 3, 80)
        if state.num_chunks and state.num_chunks % OFFSET_RESET_CHUNKS == 0:
            state.offset = SUBSAMPLING * self.enc_frames  # as run_rt.py's reset_cache (20 for 200 ms chunks)
        encoded, state.att_cache, state.cnn_cache = self.asr.forward_encoder_chunk(
            fbank, state.offset, self.required_cache, state.att_cache, state.cnn_cache)
        state.offset += encoded.shape[1]
        state.num_chunks += 1
        last = encoded[:, :1] if state.last is None else state.last
        state.last = encoded[:, -1:]
        return upsample_content(last, encoded, self.chunk_frames)


def denoise_chunk(
    dit: MeanVCDiT,
    cache: RingKVCache,
    rows: torch.Tensor,
    entries: torch.Tensor,
    noise: torch.Tensor,
    previous: torch.Tensor,
    has_previous: torch.Tensor,
    cond: torch.Tensor,
    spk: torch.Tensor,
    offset: torch.Tensor,
    num_steps: int,
    lookback: int,
) -> torch.Tensor:
    """One chunk of clean mel (B, C, mel) for a batch of sessions; writes the previous chunk to the ring.

    ``rows`` (B,) the sessions' cache slots; ``entries`` (B * C,) flat ring entries reserved for the previous
    chunk (labelled with its positions: negative, so never visible, before a stream's first chunk);
    ``noise`` (B, C, mel); ``previous`` (B, C, mel) the last clean chunk and ``has_previous`` (B,) bool;
    ``cond`` (B, C, bn) timbre-aware content; ``spk`` (B, spk_dim); ``offset`` (B,) the chunk's first frame.
    """
    b, c, _ = noise.shape
    span = torch.arange(c, device=noise.device)
    positions = torch.cat([offset[:, None] - c + span, offset[:, None] + span], dim=1)  # (B, 2C)
    labels = cache.labels[rows][:, None, None, :]  # (B, 1, 1, cap)
    start = offset[:, None, None, None]
    low = torch.cat([(start - c - lookback * c).expand(-1, 1, c, 1), (start - lookback * c).expand(-1, 1, c, 1)], 2)
    ring = (labels >= 0) & (labels >= low) & (labels < start - c)  # (B, 1, 2C, cap): older clean chunks
    prev = has_previous[:, None, None, None]
    block = torch.ones(c, c, dtype=torch.bool, device=noise.device)
    own = torch.cat([torch.cat([block.expand(b, 1, c, c), torch.zeros(b, 1, c, c, dtype=torch.bool,
                                                                        device=noise.device)], 3),
                     torch.cat([block & prev, block.expand(b, 1, c, c)], 3)], 2)  # (B, 1, 2C, 2C)
    mask = torch.cat([ring, own], dim=3)
    past = [cache.read(i, rows) for i in range(dit.cfg.depth)]
    x_previous = dit.cache_embed(previous)
    x = noise
    own_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t, r in SCHEDULES[num_steps]:
        temb = dit.time_embedding(torch.full((b,), t, device=x.device), torch.full((b,), r, device=x.device))
        tokens = torch.cat([x_previous, dit.input_embed(x, cond, spk)], dim=1)
        y, own_kv = dit.run(tokens, temb, positions, mask, past)
        x = x - (t - r) * dit.head(y[:, c:], temb)
    for i, (k, v) in enumerate(own_kv):  # the previous chunk's keys/values of the last pass
        cache.write_entries(i, entries, k[:, :c], v[:, :c])
    return x
