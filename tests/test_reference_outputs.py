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
        else:
            assert np.abs(value).max() > 0, (family, name)  # a silent output would match nothing useful
            np.testing.assert_allclose(value, expected.astype(np.float32), atol=2e-3, err_msg=f"{family}.{name}")
