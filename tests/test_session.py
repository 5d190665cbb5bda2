"""Session clock, input timeline and outbox, without a server."""

import asyncio

import numpy as np
import pytest

from models.base import AudioFormat, Pacing, StepOutput, StreamSpec, VideoFormat
from models.errors import ProtocolError
from streaming.session import Outbox, OutputChunk, Session, SessionConfig

CLOCK_SPEC = StreamSpec(
    chunk_ms=40,
    pacing=Pacing.CLOCK,
    output_audio=AudioFormat(16000),
    output_video=VideoFormat(64, 48, 25),
    event_types=frozenset({"text", "interrupt"}),
)


def clock_session(**config):
    return Session("c", "m", CLOCK_SPEC, {}, input_rate_hz=None, config=SessionConfig(**config), wake=lambda s: None)


class ChunkRecorder:
    """A session tap (the public way to watch a session's output) that keeps every chunk."""

    def __init__(self, session: Session) -> None:
        self.chunks: list[OutputChunk] = []
        session.taps.append(self)

    def on_chunk(self, chunk: OutputChunk) -> None:
        self.chunks.append(chunk)

    def on_notice(self, notice: dict) -> None:
        pass

    def on_close(self, reason: str) -> None:
        pass


def test_clock_session_is_due_one_lead_ahead_and_stamps_pts():
    s = clock_session()
    recorder = ChunkRecorder(s)
    s.start(now=100.0)  # chunk 0 plays at 100.04 and is due now
    assert s.ready_time() == pytest.approx(100.0)
    out = StepOutput(audio=np.zeros(640, np.float32), video=np.zeros((1, 48, 64, 3), np.uint8))
    assert s.deliver(out, ready_time=100.0, deadline=s.deadline(), now=100.01) is False
    assert s.ready_time() == pytest.approx(100.04)
    assert s.deliver(out, 100.04, s.deadline(), now=100.2) is True  # chunk 1 played at 100.08: late
    chunks = recorder.chunks
    assert s.outbox.num_media == 2
    assert [c.audio_pts for c in chunks] == [0, 640]
    assert [c.video_pts for c in chunks] == [[0], [3600]]


def test_idle_session_pauses_and_resumes_at_the_present():
    s = clock_session()
    recorder = ChunkRecorder(s)
    s.start(now=0.0)
    s.deliver(StepOutput(idle=True), 0.0, s.deadline(), now=0.001)
    assert s.ready_time() is None  # nothing to say: not scheduled
    s.push_event("text", {"text": "hi"})
    assert s.take_events(now=10.0)[0].type == "text"
    assert s.ready_time() == pytest.approx(10.0, abs=0.041)  # skipped ahead, no 10 s of silence
    out = StepOutput(audio=np.zeros(640, np.float32), video=np.zeros((1, 48, 64, 3), np.uint8))
    s.deliver(out, 10.0, s.deadline(), now=10.01)
    chunk = recorder.chunks[-1]
    assert chunk.discontinuity and chunk.audio_pts == 250 * 640


def test_interrupt_drops_queued_output():
    s = clock_session()
    s.start(now=0.0)
    out = StepOutput(audio=np.zeros(640, np.float32), video=np.zeros((1, 48, 64, 3), np.uint8))
    for i in range(3):
        s.deliver(out, i * 0.04, s.deadline(), now=i * 0.04)
    s.push_event("interrupt", {})
    assert s.outbox.num_media == 0 and s.stats.dropped_output_chunks == 3


def test_unknown_events_and_floods_are_refused():
    s = clock_session(max_pending_events=3)
    s.start(now=0.0)
    with pytest.raises(ProtocolError, match="accepts: \\['interrupt', 'text'\\]"):
        s.push_event("prompt", {})
    for _ in range(3):
        s.push_event("text", {"text": "x"})
    with pytest.raises(ProtocolError) as e:
        s.push_event("text", {"text": "x"})
    assert e.value.code == "rate_limited"


def test_input_overflow_drops_oldest_and_keeps_ready_times_consistent():
    spec = StreamSpec(chunk_ms=20, pacing=Pacing.INPUT, input_audio=AudioFormat(16000), output_audio=AudioFormat(16000))
    s = Session(
        "i", "m", spec, {}, input_rate_hz=16000, config=SessionConfig(max_input_buffer_s=0.1), wake=lambda s: None
    )
    s.start(now=0.0)
    for i in range(20):  # 400 ms into a 100 ms buffer
        s.push_audio(np.full(320, 1 / 32768, np.float32), pts=i * 320, now=i * 0.02)
    assert len(s.input.fifo) == 1600 and s.input.fifo.num_dropped == 320 * 15
    assert len(s._ready_times) == 5
    assert s.ready_time() == pytest.approx(0.3)  # the oldest chunk still held arrived at 300 ms


async def test_outbox_control_overtakes_media_and_close_drains():
    box = Outbox(max_media=2)
    chunk = OutputChunk(0, None, 0, None, [], False)
    box.put_media(chunk)
    box.put_control({"type": "stats"})
    assert (await box.get()) == {"type": "stats"}
    assert (await box.get()) is chunk
    assert box.put_media(chunk) is not False  # room again
    box.put_media(chunk)
    assert box.put_media(chunk) is False  # full: the oldest was dropped
    box.close()
    assert (await box.get()) is chunk and (await box.get()) is chunk
    assert (await asyncio.wait_for(box.get(), 1)) is None


def test_push_audio_takes_float_samples_and_fills_gaps_by_pts():
    """Float samples in, exactly those samples out (no PCM16 round trip); a pts gap becomes silence."""
    spec = StreamSpec(chunk_ms=20, pacing=Pacing.INPUT, input_audio=AudioFormat(16000), output_audio=AudioFormat(16000))
    s = Session("f", "m", spec, {}, input_rate_hz=16000, config=SessionConfig(), wake=lambda s: None)
    s.start(now=0.0)
    first = np.linspace(-0.3, 0.3, 320, dtype=np.float32)
    s.push_audio(first, pts=0, now=0.0)
    s.push_audio(first[:160], pts=480, now=0.03)  # 160 samples (10 ms) missing before this frame
    assert s.take_input().audio.tolist() == first.tolist()  # bit-exact: nothing quantized on the way
    second = s.input.fifo.pop(320)
    assert np.all(second[:160] == 0.0) and second[160:].tolist() == first[:160].tolist()
    assert s.input.stats()["input_gap_ms"] == 10.0
    with pytest.raises(ProtocolError, match="mono"):
        s.push_audio(np.zeros((2, 160), np.float32), pts=None)
