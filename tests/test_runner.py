"""The engine's runner on its own: model state per session, control events, batched steps and their faults.

Driven with the real pitch shifter (and its fault-injecting subclass from test_engine_faults) and plain
:class:`SchedulerOutput` plans, no engine or server around it.
"""

from __future__ import annotations

import numpy as np
from test_engine_faults import FlakyPitch

from models.base import ControlEvent, StepInput
from models.diagnostic.pitch import PitchShifter
from streaming.engine.runner import Runner
from streaming.engine.scheduler import ScheduledBatch, ScheduledSession, SchedulerOutput

from streaming_helpers import tone

CHUNK = 320


def _plan(model: str, inputs: dict[str, np.ndarray], padded: int | None = None) -> SchedulerOutput:
    sessions = [ScheduledSession(sid, StepInput(audio=x, num_valid_samples=len(x)), 0.0, 0.0)
                for sid, x in inputs.items()]
    return SchedulerOutput(batches=[ScheduledBatch(model, sessions, padded or len(sessions))])


def _chunks(seconds: float, hz: float) -> list[np.ndarray]:
    audio = tone(hz, seconds)
    return [audio[i : i + CHUNK] for i in range(0, len(audio) - CHUNK + 1, CHUNK)]


def test_states_open_and_close_once() -> None:
    pitch = PitchShifter()
    runner = Runner({"pitch": pitch})
    runner.open("a", "pitch", pitch.validate_params({}))
    runner.open("b", "pitch", pitch.validate_params({"semitones": 2}))
    assert runner.num_states == 2
    runner.close("a")
    runner.close("a")  # a second close is harmless
    runner.close("never-opened")
    assert runner.num_states == 1
    # a step for a closed session is skipped, the others go on
    out = runner.execute(_plan("pitch", {"a": np.zeros(CHUNK, np.float32), "b": np.zeros(CHUNK, np.float32)}))
    assert set(out.outputs) == {"b"} and not out.errors


def test_a_batch_equals_its_sessions_stepped_alone() -> None:
    """Batch equals single, through the runner (padding included)."""
    pitch = PitchShifter()
    batched, alone = Runner({"pitch": pitch}), Runner({"pitch": PitchShifter()})
    signals = {"a": _chunks(0.2, 220), "b": _chunks(0.2, 330), "c": _chunks(0.2, 440)}
    for sid, semitones in zip(signals, (-3, 0, 5), strict=True):
        for runner in (batched, alone):
            runner.open(sid, "pitch", pitch.validate_params({"semitones": semitones}))
    for k in range(len(signals["a"])):
        together = batched.execute(_plan("pitch", {sid: chunks[k] for sid, chunks in signals.items()}, padded=4))
        for sid, chunks in signals.items():
            single = alone.execute(_plan("pitch", {sid: chunks[k]}))
            np.testing.assert_allclose(together.outputs[sid].audio, single.outputs[sid].audio, atol=1e-6)
    (timing,) = together.timings
    assert (timing.model, timing.batch_size, timing.padded_batch_size) == ("pitch", 3, 4) and timing.seconds > 0


def test_a_failing_session_is_retried_alone_and_only_it_fails() -> None:
    flaky = FlakyPitch()
    runner = Runner({"pitch": flaky})
    runner.open("ok", "pitch", flaky.validate_params({}))
    runner.open("bad", "pitch", flaky.validate_params({"explode_after": 0}))
    out = runner.execute(_plan("pitch", {"ok": np.zeros(CHUNK, np.float32), "bad": np.zeros(CHUNK, np.float32)}))
    assert set(out.outputs) == {"ok"} and set(out.errors) == {"bad"}
    assert out.errors["bad"].code == "model_error" and "simulated model fault" in str(out.errors["bad"])
    assert out.timings == []  # a retried batch's time is not a step cost


def test_event_faults_become_notices_for_their_session_only() -> None:
    flaky = FlakyPitch()
    runner = Runner({"pitch": flaky})
    runner.open("a", "pitch", flaky.validate_params({}))
    plan = SchedulerOutput(events={
        "a": [ControlEvent("set_pitch", {"semitones": 11}),  # the handler raises: a non-fatal model error
              ControlEvent("set_pitch", {"semitones": 99}),  # out of range: the model's own error
              ControlEvent("set_pitch", {"semitones": 2})],
        "gone": [ControlEvent("set_pitch", {"semitones": 1})],  # a session closed meanwhile: ignored
    })
    notices = runner.execute(plan).notices
    assert set(notices) == {"a"}
    first, second = notices["a"][:2]
    assert first["type"] == "error" and first["code"] == "model_error" and not first["fatal"]
    assert second["type"] == "error" and second["code"] != "model_error"


def test_a_step_returning_the_wrong_number_of_outputs_is_a_model_error() -> None:
    class Short(PitchShifter):
        def step(self, states, inputs, padded_batch_size):
            return super().step(states, inputs, padded_batch_size)[:-1] if len(states) > 1 else []

    short = Short()
    runner = Runner({"pitch": short})
    runner.open("a", "pitch", short.validate_params({}))
    runner.open("b", "pitch", short.validate_params({}))
    out = runner.execute(_plan("pitch", {"a": np.zeros(CHUNK, np.float32), "b": np.zeros(CHUNK, np.float32)}))
    assert out.outputs == {} and set(out.errors) == {"a", "b"}
    assert all(e.code == "model_error" and "failed on this session" in str(e) for e in out.errors.values())


def test_warmup_measures_each_batch_size_and_leaves_no_state() -> None:
    pitch = PitchShifter()
    runner = Runner({"pitch": pitch})
    seconds = runner.warmup("pitch", [1, 4], num_steps=2)
    assert set(seconds) == {1, 4} and all(s > 0 for s in seconds.values())
    assert runner.num_states == 0
    runner.open("a", "pitch", pitch.validate_params({}))  # every slot the warmup used was given back
    assert runner.num_states == 1


def test_zero_semitones_is_a_pure_delay_through_the_runner() -> None:
    """What the runner hands back is the model's output, unchanged: 0 semitones delays, never distorts."""
    pitch = PitchShifter()
    runner = Runner({"pitch": pitch})
    runner.open("a", "pitch", pitch.validate_params({"semitones": 0}))
    chunks = _chunks(0.5, 300)
    out = np.concatenate([runner.execute(_plan("pitch", {"a": c})).outputs["a"].audio for c in chunks])
    x = np.concatenate(chunks)
    lag = int(np.argmax(np.correlate(out[2000:6000], x[1000:7000], "valid")))
    assert np.corrcoef(out[2000:6000], x[1000 + lag : 5000 + lag])[0, 1] > 0.99
