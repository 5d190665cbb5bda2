"""The diagnostic pitch shifter keeps the family invariants: streaming == offline, batch == single."""

import numpy as np
import pytest
import torch

from models.base import StepInput
from models.diagnostic.pitch import PitchShifter, shift_pitch
from models.errors import ParamError

from streaming_helpers import dominant_hz, tone


def run_chunks(model, states, signals):
    chunk = model.spec.input_chunk_samples
    outs = [[] for _ in states]
    for start in range(0, len(signals[0]), chunk):
        inputs = [StepInput(sig[start : start + chunk], chunk) for sig in signals]
        for i, out in enumerate(model.step(states, inputs, len(states))):
            outs[i].append(out.audio)
    return [np.concatenate(o) for o in outs]


def test_streaming_equals_offline_bit_exact():
    model = PitchShifter()
    signal = tone(210, 1.0) + tone(630, 1.0, amplitude=0.1)
    state = model.open_session(model.validate_params({"semitones": 3}))
    streamed = run_chunks(model, [state], [signal])[0]
    offline = shift_pitch(
        torch.zeros(1, model.grain + 1),
        torch.from_numpy(signal)[None],
        torch.tensor([0]),
        torch.tensor([2 ** (3 / 12)]),
        model.grain,
    )[0].numpy()
    np.testing.assert_array_equal(streamed, offline)


def test_batch_equals_single():
    model = PitchShifter()
    signals = [tone(200, 0.5), tone(300, 0.5, amplitude=0.2), tone(450, 0.5, amplitude=0.7)]
    semis = [4, -7, 12]
    batched_states = [model.open_session(model.validate_params({"semitones": s})) for s in semis]
    batched = run_chunks(model, batched_states, signals)
    for sig, s, out in zip(signals, semis, batched, strict=True):
        alone = run_chunks(model, [model.open_session(model.validate_params({"semitones": s}))], [sig])[0]
        np.testing.assert_array_equal(out, alone)


@pytest.mark.parametrize("semitones", [-5, 4, 12])
def test_pitch_moves_by_the_ratio(semitones):
    model = PitchShifter()
    state = model.open_session(model.validate_params({"semitones": semitones}))
    out = run_chunks(model, [state], [tone(220, 2.0)])[0]
    expected = 220 * 2 ** (semitones / 12)
    grain_rate = abs(1 - 2 ** (semitones / 12)) * 16000 / model.grain  # the delay line's sweep rate
    assert abs(dominant_hz(out[8000:], 16000) - expected) <= grain_rate


def test_state_is_a_fixed_slot_and_is_reused():
    model = PitchShifter(max_sessions=2)
    a = model.open_session({"semitones": 1.0})
    b = model.open_session({"semitones": 1.0})
    with pytest.raises(Exception, match="slots"):
        model.open_session({"semitones": 1.0})
    run_chunks(model, [a], [tone(300, 10.0)])  # a long stream does not grow anything
    assert model._history.shape == (3, model.grain + 1)
    model.close_session(a)
    c = model.open_session({"semitones": 1.0})
    assert c.slot == a.slot and c.num_samples_seen == 0
    assert float(model._history[c.slot].abs().sum()) == 0.0
    model.close_session(b)


def test_params_are_validated():
    model = PitchShifter()
    for bad in ({"semitones": 40}, {"semitones": "high"}, {"semitones": float("nan")}, {"tempo": 1}):
        with pytest.raises(ParamError):
            model.validate_params(bad)
    assert model.validate_params({}) == {"semitones": 4.0}
