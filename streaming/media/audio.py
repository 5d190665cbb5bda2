"""Incoming audio: a client's float samples at its declared rate onto a gap-free timeline at the model rate.

Transports decode what arrives on the wire to float32 (the WebSocket's PCM16 with :func:`pcm16_to_float`;
WebRTC's decoder already gives float) and push it with its pts (samples at the client's rate). A small gap
(lost or late frames) is filled with silence so the model's timeline stays continuous; an overlap (a frame
resent) is trimmed; a jump larger than ``max_gap_s`` is a resync: counted and not filled, so a paused
client does not make the server synthesize minutes of silence.
"""

from __future__ import annotations

import numpy as np

from streaming.media.resample import CausalResampler


class FloatFifo:
    """A bounded FIFO of float32 samples; pushing past capacity drops the oldest samples."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._start = 0
        self._size = 0
        self.num_dropped = 0  # samples dropped because the consumer fell behind
        self.num_pushed = 0  # samples ever pushed

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        """Maximum samples held."""
        return len(self._buf)

    def push(self, samples: np.ndarray) -> None:
        """Append samples, dropping the oldest ones on overflow."""
        n = len(samples)
        self.num_pushed += n
        cap = self.capacity
        if n >= cap:
            self.num_dropped += self._size + n - cap
            self._buf[:] = samples[n - cap :]
            self._start, self._size = 0, cap
            return
        overflow = self._size + n - cap
        if overflow > 0:
            self.num_dropped += overflow
            self._start = (self._start + overflow) % cap
            self._size -= overflow
        end = (self._start + self._size) % cap
        first = min(n, cap - end)
        self._buf[end : end + first] = samples[:first]
        self._buf[: n - first] = samples[first:]
        self._size += n

    def pop(self, n: int) -> np.ndarray:
        """Remove and return up to ``n`` oldest samples."""
        n = min(n, self._size)
        idx = (self._start + np.arange(n)) % self.capacity
        out = self._buf[idx]
        self._start = (self._start + n) % self.capacity
        self._size -= n
        return out


class AudioInput:
    """Puts a client's float32 frames onto the model's input timeline (gaps filled, overlaps trimmed, resampled)."""

    def __init__(
        self, client_rate_hz: int, model_rate_hz: int, max_buffer_s: float = 1.0, max_gap_s: float = 1.0
    ) -> None:
        self.client_rate_hz = client_rate_hz
        self.model_rate_hz = model_rate_hz
        self.fifo = FloatFifo(max(1, int(model_rate_hz * max_buffer_s)))
        self._max_gap = int(client_rate_hz * max_gap_s)
        self._next_pts: int | None = None
        # Causal and stateful: chunk boundaries leave no seams, and every call returns all the samples it
        # can (FFmpeg's resampler holds back half a filter per call, which delays each chunk by a packet).
        self._resampler = CausalResampler(client_rate_hz, model_rate_hz) if client_rate_hz != model_rate_hz else None
        self.num_gap_samples = 0  # silence inserted for missing input (client rate)
        self.num_overlap_samples = 0  # resent samples trimmed (client rate)
        self.num_resyncs = 0

    def stats(self) -> dict[str, float | int]:
        """What the input buffer holds and lost, for `stats` messages (ms at the rate the numbers were counted)."""
        return {
            "input_backlog_ms": round(len(self.fifo) * 1000 / self.model_rate_hz, 1),  # waiting for the engine
            "input_dropped_ms": round(self.fifo.num_dropped * 1000 / self.model_rate_hz, 1),
            "input_gap_ms": round(self.num_gap_samples * 1000 / self.client_rate_hz, 1),
            "input_resyncs": self.num_resyncs,
        }

    def push(self, samples: np.ndarray, pts: int | None) -> int:
        """Add one frame of mono float32 samples at the client rate; returns the model-rate samples added."""
        if pts is not None:
            samples = self._align(samples, pts)
        return self._append(samples)

    def _align(self, pcm: np.ndarray, pts: int) -> np.ndarray:
        expected = self._next_pts
        self._next_pts = max(pts + len(pcm), expected or 0)
        if expected is None:
            return pcm
        gap = pts - expected
        if abs(gap) > self._max_gap:
            self.num_resyncs += 1
            self._next_pts = pts + len(pcm)
            return pcm
        if gap > 0:
            self.num_gap_samples += gap
            return np.concatenate([np.zeros(gap, dtype=np.float32), pcm])
        if gap < 0:
            trim = min(-gap, len(pcm))
            self.num_overlap_samples += trim
            return pcm[trim:]
        return pcm

    def _append(self, samples: np.ndarray) -> int:
        if len(samples) == 0:
            return 0
        if self._resampler is not None:
            samples = self._resampler.process(samples)
            if len(samples) == 0:
                return 0
        self.fifo.push(samples)
        return len(samples)


def pcm16_to_float(payload: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes (an even number) to float32 samples in [-1, 1)."""
    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, clipping out-of-range values (NaN becomes 0)."""
    clean = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return (np.clip(clean, -1.0, 1.0) * 32767.0).round().astype(np.int16)
