"""`say` with text: the avatar drives a speech generator through the contract (a stand-in for `tts`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from avatar_helpers import speech, tiny_avatar

from models.avatar.features import HOP
from models.base import AudioFormat, ControlEvent, Generator, Pacing, StepInput, StepOutput, StreamSpec
from models.errors import ParamError
from tests.tts_helpers import make_tiny_checkpoint, requires_espeak


@dataclass
class FakeTtsState:
    samples: np.ndarray
    position: int = 0


class FakeTts(Generator):
    """Speaks the fixture utterance once per `text` event, 20 ms per step, then idles (like `tts`)."""

    name = "fake_tts"
    spec = StreamSpec(chunk_ms=20, pacing=Pacing.CLOCK, output_audio=AudioFormat(16000),
                      event_types=frozenset({"text", "interrupt"}))

    def __init__(self) -> None:
        self.num_steps = 0
        self.closed = 0

    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(params)

    def open_session(self, params: Mapping[str, Any]) -> FakeTtsState:
        return FakeTtsState(np.zeros(0, np.float32))

    def close_session(self, state: FakeTtsState) -> None:
        self.closed += 1

    def handle_event(self, state: FakeTtsState, event: ControlEvent) -> list[dict[str, Any]]:
        if event.type == "interrupt":
            state.samples, state.position = np.zeros(0, np.float32), 0
            return [{"type": "interrupted"}]
        state.samples = np.concatenate([state.samples[state.position :], speech("agent")])
        state.position = 0
        return [{"type": "text_queued", "segments": 1}]

    def step(self, states: Sequence[FakeTtsState], inputs: Sequence[StepInput], padded: int) -> list[StepOutput]:
        self.num_steps += 1
        out = []
        for s in states:
            if s.position >= len(s.samples):
                out.append(StepOutput(idle=True))
                continue
            chunk = s.samples[s.position : s.position + 320]
            s.position += 320
            out.append(StepOutput(audio=np.pad(chunk, (0, 320 - len(chunk)))))
        return out


def test_say_text_speaks_through_the_speech_generator():
    tts = FakeTts()
    gen = tiny_avatar(tts=tts)
    state = gen.open_session(gen.validate_params({}))
    notices = gen.handle_event(state, ControlEvent("say", {"text": "Five dirty lemons forgot Felix."}))
    assert notices == [{"type": "text_queued", "segments": 1}]
    played = []
    for _ in range(90):
        played.append(gen.step([state], [StepInput(np.zeros(HOP, np.float32), 0)], 1)[0].audio)
    audio = np.concatenate(played)
    expected = speech("agent")
    start = 2 * HOP  # the look-ahead pipeline delays the voice by two frames
    np.testing.assert_array_equal(audio[start : start + len(expected)], expected)
    assert not audio[start + len(expected) + 320 :].any()  # finished, then silence
    assert not state.tts_active and state.speech.final
    assert tts.num_steps < 90 * 3  # synthesis ran just ahead of playout, not all at once
    gen.close_session(state)
    assert tts.closed == 1


def test_interrupt_stops_synthesis_too():
    tts = FakeTts()
    gen = tiny_avatar(tts=tts)
    state = gen.open_session({})
    gen.handle_event(state, ControlEvent("say", {"text": "hello there"}))
    for _ in range(10):
        gen.step([state], [StepInput(np.zeros(HOP, np.float32), 0)], 1)
    gen.handle_event(state, ControlEvent("interrupt"))
    outs = [gen.step([state], [StepInput(np.zeros(HOP, np.float32), 0)], 1)[0] for _ in range(5)]
    assert all(not o.audio.any() for o in outs)
    assert not state.tts_active


@pytest.mark.parametrize(("payload", "message"), [({"text": ""}, "non-empty"), ({"text": "hi", "final": 1}, "'final'")])
def test_bad_text_is_refused(payload, message):
    gen = tiny_avatar(tts=FakeTts())
    with pytest.raises(ParamError, match=message):
        gen.handle_event(gen.open_session({}), ControlEvent("say", payload))


@requires_espeak
def test_say_text_with_the_real_tts_generator(tmp_path):
    """The tts family's generator (tiny random weights) drives the avatar's voice through the contract."""
    from models.tts.generator import TTSGenerator

    tts = TTSGenerator(checkpoint=make_tiny_checkpoint(str(tmp_path / "t.safetensors"), never_stop=False),
                       max_sessions=2)
    gen = tiny_avatar(tts=tts)
    state = gen.open_session({})
    notices = gen.handle_event(state, ControlEvent("say", {"text": "Hello there."}))
    assert notices and notices[0]["type"] == "text_queued"
    audio = np.concatenate([gen.step([state], [StepInput(np.zeros(HOP, np.float32), 0)], 1)[0].audio
                            for _ in range(40)])
    assert len(audio) == 40 * HOP and np.abs(audio).max() > 0  # synthesized speech is played
    gen.close_session(state)


@requires_espeak
async def test_the_server_hands_the_served_tts_to_the_avatar(tmp_path):
    """One TTS in memory: the avatar speaks text with the served `tts` generator, not a private copy."""
    from conftest import make_server_config, serve_app

    from streaming.client import Client, MediaCollector
    from streaming.server import load_models

    ckpt = make_tiny_checkpoint(str(tmp_path / "t.safetensors"), never_stop=False)
    config = make_server_config(models=("avatar:config=tiny,checkpoint=,width=64,height=64",
                                        f"tts:checkpoint={ckpt},max_sessions=8,max_batch_size=4"))
    generators = load_models(config)
    assert list(generators) == ["avatar", "tts"]  # the configured order
    assert generators["avatar"].text_speech.generator is generators["tts"]
    server, runner = await serve_app(config)
    try:
        served = server.engine.generators
        assert served["avatar"].text_speech.generator is served["tts"]
        async with Client(server.ws_url) as client:
            ready = await client.start("avatar", {}, input_sample_rate_hz=16_000, audio="pcm16", video="jpeg")
            await client.send({"type": "say", "text": "Hello there."})
            assert (await client.expect("text_queued"))["segments"] == 1
            collector = MediaCollector(ready)
            while len(collector.audio_samples(0)) < 16_000:
                item = await client.receive(10)
                if not isinstance(item, dict):
                    collector.add(item)
            await client.stop()
        assert np.abs(collector.audio_samples(0)).max() > 0  # the served tts spoke through the avatar
    finally:
        await runner.cleanup()
