"""A model failing on one session ends only that session; its batch-mates and other clients keep going."""

from __future__ import annotations

import asyncio

import numpy as np

from models.base import ControlEvent
from models.diagnostic.pitch import PitchShifter
from streaming.client import Client

from streaming_helpers import roundtrip, tone

RATE = 16_000


class FlakyPitch(PitchShifter):
    """The real pitch shifter, plus a fault to inject: a session opened with ``explode_after`` raises."""

    def validate_params(self, params):
        explode = params.get("explode_after")
        out = super().validate_params({k: v for k, v in params.items() if k != "explode_after"})
        return {**out, "explode_after": explode}

    def open_session(self, params):
        state = super().open_session(params)
        state.explode_after = params["explode_after"]
        return state

    def handle_event(self, state, event: ControlEvent):
        if event.type == "set_pitch" and event.payload.get("semitones") == 11:
            raise RuntimeError("event handler bug")
        return super().handle_event(state, event)

    def step(self, states, inputs, padded_batch_size):
        for s in states:
            if s.explode_after is not None and s.num_samples_seen >= s.explode_after:
                raise RuntimeError("simulated model fault")
        return super().step(states, inputs, padded_batch_size)


async def test_a_failing_session_does_not_take_its_batch_down(start_server):
    server = await start_server(("pitch",), generators={"pitch": FlakyPitch()})
    healthy_audio = tone(250, 2.0)
    async with Client(server.ws_url) as healthy, Client(server.ws_url) as doomed:
        await healthy.start("pitch", {"semitones": 2}, input_sample_rate_hz=RATE, audio="pcm16")
        await doomed.start("pitch", {"explode_after": 3200}, input_sample_rate_hz=RATE, audio="pcm16")
        healthy_run = asyncio.create_task(roundtrip(healthy, healthy_audio, RATE, 320, len(healthy_audio)))
        for _ in range(20):
            await doomed.send_audio(tone(300, 0.02))
            await asyncio.sleep(0.02)
        error = await doomed.expect("error", timeout=5)
        assert error["code"] == "model_error" and error["fatal"] and "simulated model fault" in error["message"]
        late = []  # audio sent after the failure is answered, clearly, not silently dropped
        while True:
            try:
                late.append(await doomed.receive(timeout=0.5))
            except TimeoutError:
                break
        assert late and all(m["code"] == "not_started" and "ended" in m["message"] for m in late)
        got = await healthy_run
        assert len(got.collector.audio_samples()) == len(healthy_audio)
        assert np.abs(got.collector.audio_samples()).max() > 0.1
        # the failed session is gone; the connection can start a new one
        assert len(server.engine.scheduler.sessions) == 1
        await doomed.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        await healthy.send({"type": "set_pitch", "semitones": 11})
        error = await healthy.expect("error")
        assert not error["fatal"] and "event handler bug" in error["message"]
        await healthy.send({"type": "set_pitch", "semitones": 3})
        assert (await healthy.expect("pitch"))["semitones"] == 3
