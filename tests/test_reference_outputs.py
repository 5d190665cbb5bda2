"""Every family's streaming output equals its saved reference (tests/reference_outputs.py says how they are made).

Catches a change that moves the streaming and the offline path together (the invariant tests compare the two
with each other, so they cannot see it). Tolerances: float16 storage (~5e-4 on [-1, 1]) plus float noise;
frames within 2 levels.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference_outputs import FAMILIES, path
from tests.tts_helpers import requires_espeak

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PHASE_FREE = {"harmonic"}  # outputs of a harmonic vocoder (vc's harmonic head): compared by level, not waveform


def frame_rms(audio: np.ndarray, frame: int = 320) -> np.ndarray:
    """RMS per 20 ms frame (16 kHz)."""
    return np.sqrt((audio[: len(audio) // frame * frame].reshape(-1, frame) ** 2).mean(1))


@pytest.mark.parametrize("family", [pytest.param(f, marks=requires_espeak) if f == "tts" else f for f in FAMILIES])
def test_streaming_output_matches_the_saved_reference(family):
    saved = np.load(path(family))
    outputs = FAMILIES[family]()
    assert set(outputs) == set(saved.files)
    for name, value in outputs.items():
        expected = saved[name]
        assert value.shape == expected.shape, (family, name)
        if expected.dtype == np.uint8:
            assert np.abs(value.astype(int) - expected.astype(int)).max() <= 2, (family, name)
        elif name in PHASE_FREE:
            # A harmonic oscillator's waveform keeps every earlier pitch in its running phase: noise of 1e-5 on the
            # input moved this output by 0.17 from its first samples on eight of eight inputs (another machine's
            # float rounding does the same), the iSTFT head's by 1e-7. What is compared is the level per 20 ms.
            level, saved_level = frame_rms(value), frame_rms(expected.astype(np.float32))
            assert np.abs(value).max() > 0, (family, name)
            assert np.mean(np.abs(level - saved_level) / (saved_level + 1e-3)) < 0.05, (family, name)
            np.testing.assert_allclose(level, saved_level, rtol=0.15, atol=2e-3, err_msg=f"{family}.{name}")
        else:
            assert np.abs(value).max() > 0, (family, name)  # a silent output would match nothing useful
            np.testing.assert_allclose(value, expected.astype(np.float32), atol=2e-3, err_msg=f"{family}.{name}")
