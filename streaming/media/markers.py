"""Latency markers: short tone bursts put into a signal at known samples, found again after a round trip.

Shared by the glass-to-glass bench and the transport tests. A burst (a few ms of a 2 kHz tone under a
Hann window) survives Opus coding and the diagnostic pitch shifter at 0 semitones (a pure delay); its
onset is the first sample whose magnitude crosses a threshold after a quiet stretch.
"""

from __future__ import annotations

import numpy as np

BURST_HZ = 2000.0
BURST_MS = 4.0
BURST_AMPLITUDE = 0.5


def marker_train(
    sample_rate_hz: int, num_markers: int, period_s: float, lead_s: float = 0.5
) -> tuple[np.ndarray, list[int]]:
    """Silence with a burst every ``period_s`` after ``lead_s``; returns (samples, onset sample indices)."""
    n = round(sample_rate_hz * BURST_MS / 1000)
    t = np.arange(n) / sample_rate_hz
    burst = (BURST_AMPLITUDE * np.hanning(n) * np.sin(2 * np.pi * BURST_HZ * t)).astype(np.float32)
    total = round(sample_rate_hz * (lead_s + num_markers * period_s + 0.5))
    out = np.zeros(total, dtype=np.float32)
    onsets = []
    for k in range(num_markers):
        start = round(sample_rate_hz * (lead_s + k * period_s))
        out[start : start + n] += burst
        onsets.append(start)
    return out, onsets


def find_onsets(
    samples: np.ndarray, sample_rate_hz: int, *, threshold: float = 0.15, min_gap_s: float = 0.1
) -> list[int]:
    """Sample indices where ``|samples|`` first crosses ``threshold`` after ``min_gap_s`` below it."""
    loud = np.flatnonzero(np.abs(samples) >= threshold)
    gap = round(min_gap_s * sample_rate_hz)
    onsets: list[int] = []
    last = -gap - 1
    for idx in loud:
        if idx - last > gap:
            onsets.append(int(idx))
        last = idx
    return onsets


def match_onsets(sent_s: list[float], received_s: list[float], max_delay_s: float = 1.0) -> list[float]:
    """Pair each sent marker time with the first received one after it (within ``max_delay_s``); delays in s."""
    delays = []
    j = 0
    for s in sent_s:
        while j < len(received_s) and received_s[j] < s:
            j += 1
        if j < len(received_s) and received_s[j] - s <= max_delay_s:
            delays.append(received_s[j] - s)
            j += 1
    return delays


def onset_times(chunks: list[tuple[float, np.ndarray]], sample_rate_hz: int, **kwargs: float) -> list[float]:
    """Marker onsets in a stream of ``(time of the chunk's first sample, samples)``, as times in seconds."""
    if not chunks:
        return []
    starts = np.cumsum([0] + [len(c) for _, c in chunks])
    samples = np.concatenate([c for _, c in chunks])
    times = []
    for idx in find_onsets(samples, sample_rate_hz, **kwargs):
        k = int(np.searchsorted(starts, idx, side="right")) - 1
        times.append(chunks[k][0] + (idx - starts[k]) / sample_rate_hz)
    return times
