"""Latency markers: short tone bursts put into a signal at known samples, found again after a round trip.

Shared by the glass-to-glass bench and the transport tests. A burst (a few ms of a tone under a Hann
window) survives Opus coding and the diagnostic pitch shifter at 0 semitones (a pure delay); its onset is
the first sample whose magnitude crosses a threshold after a quiet stretch.

Markers carry an id: burst ``k`` is a tone of ``MARKER_HZ[k % 3]``. Pairing each received marker with the
latest sent one *of the same id* (:func:`match_markers`) stays right when the path drops a marker: after a
stall the server's pacer drops the backlog's audio to get its latency back, and pairing by time alone
(:func:`match_onsets`) then pairs every later marker with the next one sent, reading one marker period
of latency that is not there.
"""

from __future__ import annotations

import numpy as np

MARKER_HZ = (1000.0, 2000.0, 3000.0)  # burst k's tone: its id is k % 3
BURST_MS = 4.0
BURST_AMPLITUDE = 0.5


def marker_train(
    sample_rate_hz: int, num_markers: int, period_s: float, lead_s: float = 0.5
) -> tuple[np.ndarray, list[int]]:
    """Silence with a burst every ``period_s`` after ``lead_s``; returns (samples, onset sample indices)."""
    n = round(sample_rate_hz * BURST_MS / 1000)
    t = np.arange(n) / sample_rate_hz
    bursts = [(BURST_AMPLITUDE * np.hanning(n) * np.sin(2 * np.pi * hz * t)).astype(np.float32) for hz in MARKER_HZ]
    total = round(sample_rate_hz * (lead_s + num_markers * period_s + 0.5))
    out = np.zeros(total, dtype=np.float32)
    onsets = []
    for k in range(num_markers):
        start = round(sample_rate_hz * (lead_s + k * period_s))
        out[start : start + n] += bursts[k % len(MARKER_HZ)]
        onsets.append(start)
    return out, onsets


def marker_id(samples: np.ndarray, onset: int, sample_rate_hz: int) -> int:
    """The id of the burst starting near sample ``onset``: the index of the ``MARKER_HZ`` tone nearest its peak."""
    n = round(sample_rate_hz * BURST_MS / 1000)
    begin = max(0, onset - n // 2)
    window = samples[begin : begin + 2 * n]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window)), 8192))
    peak_hz = float(np.argmax(spectrum)) * sample_rate_hz / 8192
    return int(np.argmin([abs(peak_hz - hz) for hz in MARKER_HZ]))


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


def match_markers(
    sent: list[tuple[float, int]], received: list[tuple[float, int]], max_delay_s: float = 1.0
) -> list[float]:
    """Delays (s) of identified markers (``(time, id)`` each): a received one pairs with the latest sent one of its id.

    Sent markers that never came back (or came back more than ``max_delay_s`` later) are left out, and
    a marker received twice counts once. Unambiguous while delays and runs of lost markers stay under
    ``len(MARKER_HZ)`` marker periods.
    """
    delays: dict[int, float] = {}
    for r, rid in received:
        candidates = [i for i, (s, sid) in enumerate(sent) if sid == rid and s <= r]
        if candidates and r - sent[candidates[-1]][0] <= max_delay_s:
            delays.setdefault(candidates[-1], r - sent[candidates[-1]][0])
    return [delays[i] for i in sorted(delays)]


def _stream(chunks: list[tuple[float, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.cumsum([0] + [len(c) for _, c in chunks])
    return starts, np.concatenate([c for _, c in chunks])


def onset_times(chunks: list[tuple[float, np.ndarray]], sample_rate_hz: int, **kwargs: float) -> list[float]:
    """Marker onsets in a stream of ``(time of the chunk's first sample, samples)``, as times in seconds."""
    return [t for t, _ in marker_times(chunks, sample_rate_hz, **kwargs)]


def marker_times(
    chunks: list[tuple[float, np.ndarray]], sample_rate_hz: int, **kwargs: float
) -> list[tuple[float, int]]:
    """Markers in a stream of ``(time of the chunk's first sample, samples)``: ``(onset time in s, id)`` each."""
    if not chunks:
        return []
    starts, samples = _stream(chunks)
    out = []
    for idx in find_onsets(samples, sample_rate_hz, **kwargs):
        k = int(np.searchsorted(starts, idx, side="right")) - 1
        out.append((chunks[k][0] + (idx - starts[k]) / sample_rate_hz, marker_id(samples, idx, sample_rate_hz)))
    return out
