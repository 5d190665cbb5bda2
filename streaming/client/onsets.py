"""Measuring what a WebRTC client received: sound and picture onsets by arrival time, and their A/V offset.

Used by the transport tests and the glass-to-glass bench to check lip sync end to end: the test card beeps
and shows a corner marker at the same media time, so the arrival times of the two onsets differ by the
audio/video offset the whole path added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import av
import numpy as np

from streaming.transports.rtc_support import mono_samples


def beep_onsets(audio: Sequence[tuple[float, av.AudioFrame]], threshold: float = 0.05) -> list[float]:
    """Arrival times of sound onsets after silence (the test card's beeps): frame arrival + offset in it."""
    onsets, quiet = [], True
    for arrival, frame in audio:
        samples = mono_samples(frame)
        loud = np.flatnonzero(np.abs(samples) > threshold)
        if len(loud) and quiet:
            onsets.append(arrival + loud[0] / frame.sample_rate)
        quiet = len(loud) == 0 or loud[-1] < len(samples) - frame.sample_rate // 500  # silent for the last 2 ms
    return onsets


def marker_onsets(
    video: Sequence[tuple[float, av.VideoFrame]], has_marker: Callable[[np.ndarray], bool]
) -> list[float]:
    """Arrival times of the frames where a visual marker appears (``has_marker`` reads an RGB frame).

    For the test card, pass ``models.diagnostic.testcard.has_beep_marker`` (its once-a-second corner marker).
    """
    onsets, shown = [], False
    for arrival, frame in video:
        marker = has_marker(frame.to_ndarray(format="rgb24"))
        if marker and not shown:
            onsets.append(arrival)
        shown = marker
    return onsets


def av_offsets_ms(audio_onsets: Sequence[float], video_onsets: Sequence[float], max_s: float = 0.5) -> list[float]:
    """Video minus audio arrival (ms) for each video onset with an audio onset within ``max_s``."""
    out = []
    for video_t in video_onsets:
        if audio_onsets:
            audio_t = min(audio_onsets, key=lambda t: abs(t - video_t))
            if abs(audio_t - video_t) < max_s:
                out.append((video_t - audio_t) * 1000)
    return out
