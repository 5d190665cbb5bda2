"""Causal rational resampling with no lag in sample count: 960 samples at 48 kHz give exactly 320 at 16 kHz.

FFmpeg's resampler (and so PyAV's and aiortc's) holds back half its filter length on every call, so a
20 ms packet at 48 kHz yields 304 samples at 16 kHz instead of 320: an input-paced model then waits for the
*next* packet to complete its chunk, and the way back does the same in the Opus encoder's resampler. Each
costs a whole packet (20 ms) of latency. This polyphase FIR is causal (output sample k uses only input up to
its own time), so every call returns every sample it can; its group delay is about half a filter phase
(well under 1 ms), which is a delay of the signal, not of the packet.
"""

from __future__ import annotations

import math

import numpy as np


class CausalResampler:
    """Streaming resampler for mono float32 audio between rates with a small rational ratio (e.g. 3:1)."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int, taps_per_phase: int = 24) -> None:
        g = math.gcd(in_rate_hz, out_rate_hz)
        self.in_rate_hz, self.out_rate_hz = in_rate_hz, out_rate_hz
        self.up, self.down = out_rate_hz // g, in_rate_hz // g  # L, M
        if self.up > 1024 or self.down > 1024:
            raise ValueError(f"{in_rate_hz} -> {out_rate_hz} Hz needs a ratio with terms <= 1024")
        self.num_taps = taps_per_phase  # T: input samples per output sample
        num = self.up * taps_per_phase
        # Low-pass prototype at the upsampled rate, cut a little below the lower Nyquist frequency.
        cutoff = 0.45 * min(in_rate_hz, out_rate_hz) / (in_rate_hz * self.up)  # cycles per upsampled sample
        n = np.arange(num) - (num - 1) / 2.0
        proto = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(num, 8.0)
        proto *= self.up / proto.sum()  # unity gain after zero-stuffing by L
        # phases[p, i] = proto[p + i * L]: output with upsampled index u uses phase u % L on x[u // L - i].
        self._phases = proto.reshape(taps_per_phase, self.up).T.astype(np.float32)  # (L, T)
        self._history = np.zeros(taps_per_phase - 1, dtype=np.float32)
        self._num_in = 0  # input samples consumed so far
        self._num_out = 0  # output samples produced so far

    @property
    def passthrough(self) -> bool:
        """True when the rates are equal (samples are returned unchanged)."""
        return self.up == self.down == 1

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next block; returns every output sample whose input has arrived."""
        x = np.asarray(samples, dtype=np.float32)
        if self.passthrough:
            return x
        buf = np.concatenate([self._history, x])
        total = self._num_in + len(x)
        end = (total * self.up - 1) // self.down + 1 if total else 0  # outputs with u // L <= total - 1
        ks = np.arange(self._num_out, end, dtype=np.int64)
        u = ks * self.down
        base = u // self.up - self._num_in + (self.num_taps - 1)  # buffer index of x[u // L]
        idx = base[:, None] - np.arange(self.num_taps)[None, :]  # (K, T)
        out = np.einsum("kt,kt->k", buf[idx], self._phases[u % self.up])
        self._history = buf[len(buf) - (self.num_taps - 1) :]
        self._num_in, self._num_out = total, end
        return out.astype(np.float32, copy=False)
