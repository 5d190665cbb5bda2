"""One client's stream, independent of transport: input buffer, control events, output clock, outbox, stats.

Everything here runs on the event loop. The engine's scheduler asks a session when its next chunk is due
(:meth:`Session.ready_time`), takes its input and pending events, and later hands back the model's output
(:meth:`Session.deliver`), which the session stamps with pts on its own clock and queues for the
transport.

The clock: chunk ``k`` of a session covers media time ``[k, k+1) * chunk``. For input-paced models chunk
``k`` is due when input chunk ``k`` has fully arrived. For clock-paced models chunk ``k`` plays at
``origin + k * chunk`` and is due ``lead`` before that; when such a session falls idle (nothing to say) its
clock keeps running, and on resuming it skips ahead to the present (a discontinuity) rather than
replaying the silence.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from models.base import ControlEvent, Pacing, StepInput, StepOutput, StreamSpec
from models.errors import ProtocolError
from streaming.media.audio import AudioInput
from streaming.outbox import Outbox
from streaming.protocol import VIDEO_CLOCK_HZ


class SessionState(str, Enum):
    """Lifecycle of a session."""

    OPENING = "opening"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class SessionConfig:
    """Runtime limits of a session (from the server config)."""

    max_input_buffer_s: float = 1.0  # input beyond this is dropped oldest-first (engine behind)
    max_gap_s: float = 1.0  # larger pts jumps in client input are resyncs, not silence
    output_queue_chunks: int = 32  # media chunks waiting for a slow client before dropping
    max_pending_events: int = 64  # control events waiting for the next step
    clock_lead_ms: float | None = None  # clock-paced: produce this far ahead of playout (default: the model's)
    late_after_ms: float | None = None  # input-paced: a chunk is late after this (default: the model's)


def latency_allowance_s(spec: StreamSpec, config: SessionConfig) -> float:
    """How long a due chunk may take before it is late.

    Input-paced: from the arrival of its last input sample. Clock-paced: the lead, i.e. from when it falls
    due until it must play. Admission control keeps the worst case (a full engine turn in flight, then
    the chunk's own turn) inside this allowance.
    """
    override = config.clock_lead_ms if spec.pacing is Pacing.CLOCK else config.late_after_ms
    if override is not None:  # the server's setting wins over the model's
        return override / 1000.0
    return (spec.latency_allowance_ms or spec.chunk_ms) / 1000.0


@dataclass
class OutputChunk:
    """One step's media with pts on the session clock."""

    chunk_index: int
    audio: np.ndarray | None  # float32 at the model's output rate
    audio_pts: int  # samples at the output rate
    video: np.ndarray | None  # (F, H, W, 3) uint8
    video_pts: list[int]  # 90 kHz ticks, one per frame
    discontinuity: bool  # the clock jumped before this chunk (resumed after idle)


class SessionTap(Protocol):
    """Observes a session's output on the event loop, e.g. to fan it out to viewers."""

    def on_chunk(self, chunk: OutputChunk) -> None:
        """A chunk was stamped and queued for the session's own client."""

    def on_notice(self, notice: dict[str, Any]) -> None:
        """The model sent a notice (e.g. a prompt was applied)."""

    def on_close(self, reason: str) -> None:
        """The session ended."""


@dataclass
class SessionStats:
    """Counters a session reports in `stats` messages and to metrics."""

    chunks_in: int = 0
    chunks_out: int = 0
    late_chunks: int = 0
    dropped_output_chunks: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=1024))

    def snapshot(self) -> dict[str, Any]:
        """JSON-able summary with latency percentiles over the last 1024 chunks."""
        lat = np.array(self.latencies_s) * 1000.0 if self.latencies_s else None
        return {
            "chunks_in": self.chunks_in,
            "chunks_out": self.chunks_out,
            "late_chunks": self.late_chunks,
            "dropped_output_chunks": self.dropped_output_chunks,
            "chunk_latency_ms_p50": round(float(np.percentile(lat, 50)), 3) if lat is not None else None,
            "chunk_latency_ms_p99": round(float(np.percentile(lat, 99)), 3) if lat is not None else None,
        }


class Session:
    """Per-client state of one stream through one model."""

    def __init__(
        self,
        session_id: str,
        model: str,
        spec: StreamSpec,
        params: dict[str, Any],
        *,
        input_rate_hz: int | None,
        config: SessionConfig,
        wake: Callable[[Session], None],
    ) -> None:
        self.id = session_id
        self.model = model
        self.spec = spec
        self.params = params
        self.config = config
        self.state = SessionState.OPENING
        self.stats = SessionStats()
        self.outbox: Outbox[OutputChunk] = Outbox(config.output_queue_chunks)
        self.close_reason: str | None = None
        self.shared = False  # viewers may watch this session's output (the producer opted in at start)
        self.taps: list[SessionTap] = []  # observers of every output chunk (broadcast to viewers)
        self.access: Any = None  # who started it (streaming.auth.Access): per-client limits, scopes
        self._wake = wake
        self._events: deque[ControlEvent] = deque()
        self._chunk_s = spec.chunk_s
        # clock-paced: produce this far ahead of playout; input-paced: a chunk is late after this long
        self._allowance_s = latency_allowance_s(spec, config)
        self._next_index = 0
        self._origin = 0.0  # monotonic time at which chunk 0 plays (clock-paced)
        self._idle = False
        self._jumped = False
        self._ready_times: deque[float] = deque()  # input-paced: arrival time of each complete chunk
        self.input: AudioInput | None = None
        if spec.input_audio is not None:
            self.input = AudioInput(
                input_rate_hz or spec.input_audio.sample_rate_hz,
                spec.input_audio.sample_rate_hz,
                max_buffer_s=max(config.max_input_buffer_s, 2 * spec.chunk_s),
                max_gap_s=config.max_gap_s,
            )

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, now: float | None = None) -> None:
        """Mark the session running and start its clock."""
        now = time.monotonic() if now is None else now
        self.state = SessionState.RUNNING
        self._origin = now + self._allowance_s
        self._wake(self)

    def close(self, reason: str) -> None:
        """Stop the session; the transport drains the outbox and ends."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self.close_reason = reason
        self.outbox.close()
        for tap in list(self.taps):
            tap.on_close(reason)

    @property
    def running(self) -> bool:
        """True between start and close."""
        return self.state is SessionState.RUNNING

    @property
    def idle(self) -> bool:
        """True while a clock-paced model has nothing to produce (its silence is not an underrun)."""
        return self._idle

    def report(self) -> dict[str, Any]:
        """The session's `stats` fields: output counters and latency, and the input buffer's state."""
        out = {"session": self.id, **self.stats.snapshot()}
        if self.input is not None:
            out.update(self.input.stats())
        return out

    # -- input (from the transport) ------------------------------------------------------------------
    def push_audio(self, samples: np.ndarray, pts: int | None, now: float | None = None) -> None:
        """Add client audio: mono float32 samples in [-1, 1] at the declared rate, ``pts`` in samples at it."""
        if self.input is None:
            raise ProtocolError(f"model '{self.model}' takes no audio input", "bad_frame")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ProtocolError(f"audio must be mono samples, got shape {samples.shape}", "bad_frame")
        now = time.monotonic() if now is None else now
        fifo, chunk = self.input.fifo, self.spec.input_chunk_samples
        before = fifo.num_pushed // chunk
        self.input.push(samples, pts)
        if self.spec.pacing is not Pacing.INPUT:
            return
        completed = fifo.num_pushed // chunk - before
        self._ready_times.extend([now] * completed)
        while len(self._ready_times) > len(fifo) // chunk:  # overflow dropped the oldest chunks
            self._ready_times.popleft()
        if completed:
            self._wake(self)

    def push_event(self, event_type: str, payload: dict[str, Any]) -> None:
        """Queue a control event for the model (applied before the next step)."""
        if event_type not in self.spec.event_types:
            accepted = sorted(self.spec.event_types) or "none"
            raise ProtocolError(
                f"message type '{event_type}' is not known to model '{self.model}' (it accepts: {accepted})",
                "unknown_type",
            )
        if len(self._events) >= self.config.max_pending_events:
            raise ProtocolError("too many control events waiting; slow down", "rate_limited")
        if event_type == "interrupt":  # barge-in: queued output is stale the moment the user speaks
            self.stats.dropped_output_chunks += self.outbox.clear_media()
        self._events.append(ControlEvent(event_type, payload))
        self._wake(self)

    # -- scheduling (from the engine's scheduler) ----------------------------------------------------
    @property
    def has_events(self) -> bool:
        """Control events are waiting."""
        return bool(self._events)

    def take_events(self, now: float | None = None) -> list[ControlEvent]:
        """Hand pending control events to the engine; an idle clock-paced session resumes."""
        events = list(self._events)
        self._events.clear()
        if events and self._idle:
            self._resume(time.monotonic() if now is None else now)
        return events

    def return_events(self, events: list[ControlEvent]) -> None:
        """Put events the engine took back at the front of the queue (it prepared them off the worker)."""
        self._events.extendleft(reversed(events))
        self._wake(self)

    def ready_time(self) -> float | None:
        """When the next chunk is (or will be) due; None while waiting for input or idle."""
        if not self.running:
            return None
        if self.spec.pacing is Pacing.INPUT:
            return self._ready_times[0] if self._ready_times else None
        if self._idle or self.outbox.media_full:
            return None
        return self._origin + self._next_index * self._chunk_s - self._allowance_s

    def deadline(self) -> float:
        """When the next chunk must be done to count as on time."""
        if self.spec.pacing is Pacing.INPUT:
            ready = self._ready_times[0] if self._ready_times else time.monotonic()
            return ready + self._allowance_s
        return self._origin + self._next_index * self._chunk_s

    def take_input(self) -> StepInput:
        """Take the next chunk of input (clock-paced: what has arrived, zero-padded)."""
        num = self.spec.input_chunk_samples
        if self.input is None:
            return StepInput()
        if self.spec.pacing is Pacing.INPUT:
            self._ready_times.popleft()
        audio = self.input.fifo.pop(num)
        valid = len(audio)
        if valid < num:
            audio = np.concatenate([audio, np.zeros(num - valid, dtype=np.float32)])
        self.stats.chunks_in += 1
        return StepInput(audio=audio, num_valid_samples=valid)

    # -- output (from the engine's scheduler) --------------------------------------------------------
    def notify(self, notice: dict[str, Any]) -> None:
        """Queue a model notice for the client (and for viewers of a shared session)."""
        self.outbox.put_control(notice)
        for tap in self.taps:
            tap.on_notice(notice)

    def deliver(self, output: StepOutput, ready_time: float, deadline: float, now: float) -> bool:
        """Stamp a step's output with pts and queue it; returns True if it was late."""
        for notice in output.notices:
            self.notify(notice)
        if output.idle:
            self._idle = True
            return False
        index = self._next_index
        self._next_index += 1
        spec = self.spec
        video_pts: list[int] = []
        if spec.output_video is not None:
            first = index * spec.frames_per_chunk
            video_pts = [
                round((first + i) * VIDEO_CLOCK_HZ / spec.output_video.fps) for i in range(spec.frames_per_chunk)
            ]
        chunk = OutputChunk(
            chunk_index=index,
            audio=output.audio,
            audio_pts=index * spec.output_chunk_samples,
            video=output.video,
            video_pts=video_pts,
            discontinuity=self._jumped,
        )
        self._jumped = False
        for tap in self.taps:
            tap.on_chunk(chunk)
        if not self.outbox.put_media(chunk):
            self.stats.dropped_output_chunks += 1
        late = now > deadline
        self.stats.chunks_out += 1
        self.stats.late_chunks += int(late)
        self.stats.latencies_s.append(now - ready_time)
        return late

    def _resume(self, now: float) -> None:
        self._idle = False
        present = math.ceil((now + self._allowance_s - self._origin) / self._chunk_s - 1e-9)
        if present > self._next_index:
            self._next_index = present
            self._jumped = True
