"""Output pacing: a session's media, produced in chunks, released on a wall clock (frames or packets).

A paced track (an aiortc track, or any sender that wants one frame per period) asks :meth:`next_frame`;
the pacer sleeps until the frame's slot and returns it. Slots are ``t0 + n * period`` on the monotonic
clock, so output never drifts from real time and never bursts: a loop stall is absorbed by moving the
grid, not by sending the missed slots back to back. The frame index ``n`` is the output pts, continuous
whatever happens upstream.

Design of the slot decision (one per frame):

* the data for the slot is there: send it, and note its *lead* (how long before its slot it arrived);
* it is not there yet: wait up to ``grace`` for it; if it comes, send it and move the grid later by the
  wait (the stream was a little later than the grid, so the grid follows it: no silence inserted);
* it still is not there: an **underrun**: audio sends what it has padded with silence, video repeats the
  last frame, and the pacer counts it (only while ``active()`` says output is expected, so a model that is
  idle on purpose, e.g. speech synthesis with nothing to say, is not counted);
* once a window, if the smallest lead in it exceeds ``margin + trim_above``, the grid moves earlier (or
  whole frames are dropped, when the lead exceeds a frame) so latency comes back to the margin after a
  hiccup or clock drift between client and server.

With audio and video, the video pacer follows the audio pacer's clock by the chunks' pts
(:meth:`AudioPacer.anchor`), so each pacer's own adjustments never pull lips and voice apart.

Pre-encoded packets (a shared stream's viewers) cannot be re-cut, padded or repeated: they are paced by
:mod:`streaming.media.packet_pacing` instead.

Everything runs on the event loop; ``push`` is cheap and never blocks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streaming.media.audio import FloatFifo


@dataclass(frozen=True)
class PacingConfig:
    """How tightly a pacer follows its input."""

    margin_ms: float = 2.0  # lead the grid keeps in steady state (absorbs scheduling jitter)
    grace_ms: float | None = None  # how long a slot waits for late data (default: half a frame)
    trim_above_ms: float = 4.0  # trim latency when the smallest lead in a window exceeds margin + this
    window_s: float = 1.0  # leads are judged over this window
    max_buffer_s: float = 2.0  # media held beyond this is dropped oldest-first


@dataclass
class PacerStats:
    """What a pacer did; all counts since it started."""

    frames: int = 0
    underruns: int = 0  # slots filled with silence / a repeated frame while output was expected
    late: int = 0  # slots sent after waiting for their data (the grid moved later)
    trimmed_frames: float = 0.0  # frames dropped (or skipped by moving the grid) to cut latency
    stalls: int = 0  # slots the loop reached more than a frame late (grid moved, nothing burst)
    sync_moves: int = 0  # video grid re-aligned to the audio clock (a frame held back, or the grid moved earlier)
    sync_skips: int = 0  # video frames skipped because the audio they go with has already played


class _Pacer:
    """The slot clock and lead bookkeeping shared by the audio and video pacers."""

    def __init__(
        self,
        period_s: float,
        config: PacingConfig,
        active: Callable[[], bool] | None,
        clock: Callable[[], float],
    ) -> None:
        self.period_s = period_s
        self.config = config
        self.stats = PacerStats()
        self._active = active or (lambda: True)
        self._clock = clock
        self._margin = config.margin_ms / 1000.0
        self._grace = (config.grace_ms / 1000.0) if config.grace_ms is not None else period_s / 2
        self._trim_above = config.trim_above_ms / 1000.0
        self._window_slots = max(1, round(config.window_s / period_s))
        self._t0: float | None = None
        self._last_slot = 0.0  # the slot of the frame being released
        self._n = 0
        self._window_min_lead = math.inf
        self._window_count = 0
        self._num_windows = 0
        self._short_windows = 0  # windows still judged short (after a stall)
        self._data = asyncio.Event()
        self._closed = False

    # -- to implement ---------------------------------------------------------------------------------
    def _ready(self) -> bool:
        """A whole frame's data is buffered."""
        raise NotImplementedError

    def _needed_arrival(self) -> float:
        """Arrival time of the last unit the next frame needs (only called when ``_ready``)."""
        raise NotImplementedError

    def _drop_frames(self, num: int) -> int:
        """Drop up to ``num`` frames of the oldest buffered data (keeping one frame); returns how many."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """No more data: :meth:`next_frame` returns None from now on."""
        self._closed = True
        self._data.set()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def frame_index(self) -> int:
        """Index of the next frame (the output pts in frames)."""
        return self._n

    def _notify(self) -> None:
        self._data.set()

    async def _wait_data(self, until: float | None) -> None:
        """Wait for a push (or close) until monotonic time ``until`` (None: forever)."""
        self._data.clear()
        timeout = None if until is None else max(0.0, until - self._clock())
        try:
            await asyncio.wait_for(self._data.wait(), timeout)
        except TimeoutError:
            pass

    async def _slot(self) -> bool | None:
        """Sleep to the next slot; True: a frame's data is ready, False: underrun, None: closed."""
        if self._t0 is None:  # the grid starts with the first frame of data
            while not self._ready() and not self._closed:
                await self._wait_data(None)
            if self._closed:
                return None
            self._t0 = self._clock() + self._margin
        slot = self._t0 + self._n * self.period_s
        now = self._clock()
        if now < slot:
            await asyncio.sleep(slot - now)
        if self._closed:
            return None
        now = self._clock()
        if now > slot + self.period_s:  # the loop stalled: move the grid instead of bursting
            self.stats.stalls += 1
            self._t0 += now - slot
            slot = now
            # Moving the grid added the stall to the latency, and what was produced meanwhile is a backlog:
            # judge the next leads over short windows (the first still sees the backlog's own small leads,
            # the second its excess) so the latency comes back within ~0.4 s, not after whole windows.
            self._window_min_lead, self._window_count, self._short_windows = math.inf, 0, 2
        ready = self._ready()
        if not ready:
            deadline = slot + self._grace
            while not self._ready() and not self._closed and self._clock() < deadline:
                await self._wait_data(deadline)
            if self._closed:
                return None
            ready = self._ready()
            if ready:  # late but within grace: the grid follows the stream
                self.stats.late += 1
                self._t0 += self._clock() - slot
                slot = self._t0 + self._n * self.period_s
        self._last_slot = slot
        if ready:
            self._note_lead(slot - self._needed_arrival())
        elif self._active():
            self.stats.underruns += 1
        self._n += 1
        self.stats.frames += 1
        return ready

    def _note_lead(self, lead: float) -> None:
        self._window_min_lead = min(self._window_min_lead, lead)
        self._window_count += 1
        # The first window is short: a stream often starts with a burst (packets queued while connecting).
        short = not self._num_windows or self._short_windows > 0
        if self._window_count < (min(self._window_slots, 10) if short else self._window_slots):
            return
        self._num_windows += 1
        self._short_windows = max(0, self._short_windows - 1)
        excess = self._window_min_lead - self._margin
        self._window_min_lead, self._window_count = math.inf, 0
        if excess <= self._trim_above or self._t0 is None:
            return
        # Whole frames of excess are dropped from the buffer; the rest moves the grid earlier.
        whole = int(excess // self.period_s)
        if whole:
            dropped = self._drop_frames(whole)
            self.stats.trimmed_frames += dropped
            excess -= dropped * self.period_s
        if excess > 0:
            self._t0 -= min(excess, self.period_s)
            self.stats.trimmed_frames += min(excess, self.period_s) / self.period_s


class AudioPacer(_Pacer):
    """Mono float32 audio in chunks of any size -> frames of ``frame_samples`` on the slot clock."""

    def __init__(
        self,
        sample_rate_hz: int,
        frame_samples: int,
        config: PacingConfig | None = None,
        *,
        active: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = config or PacingConfig()
        super().__init__(frame_samples / sample_rate_hz, config, active, clock)
        self.sample_rate_hz = sample_rate_hz
        self.frame_samples = frame_samples
        self._fifo = FloatFifo(max(2 * frame_samples, int(sample_rate_hz * config.max_buffer_s)))
        self._arrivals: deque[tuple[int, float]] = deque()  # (total samples pushed after a push, time)
        self._num_pushed = 0
        self._media_next: float | None = None  # media time (s) of the first buffered sample, when pts are given
        self._fifo_drops_seen = 0
        self._anchor: tuple[float, float] | None = None  # (slot - media time, when) of the last full frame

    def push(self, samples: np.ndarray, now: float | None = None, pts: int | None = None) -> None:
        """Queue audio produced by the session (``pts``: its first sample's, in samples, for A/V sync)."""
        if self._closed or len(samples) == 0:
            return
        if pts is not None and (self._media_next is None or len(self._fifo) == 0):
            self._media_next = pts / self.sample_rate_hz  # (re)start, e.g. after a pause with a pts jump
        self._fifo.push(np.asarray(samples, dtype=np.float32))
        self._consumed(self._fifo.num_dropped - self._fifo_drops_seen)  # the buffer overflowed: oldest dropped
        self._fifo_drops_seen = self._fifo.num_dropped
        self._num_pushed += len(samples)
        self._arrivals.append((self._num_pushed, self._clock() if now is None else now))
        self._notify()

    @property
    def buffered_samples(self) -> int:
        """Samples waiting to be sent."""
        return len(self._fifo)

    def anchor(self, max_age_s: float = 1.0) -> float | None:
        """Release time minus media time of the audio now playing: where media time t plays is ``anchor + t``.

        None before the first full frame with pts, and when no full frame went out for ``max_age_s``.
        """
        if self._anchor is None or self._clock() - self._anchor[1] > max_age_s:
            return None
        return self._anchor[0]

    def _consumed(self, num_samples: int) -> None:
        if self._media_next is not None:
            self._media_next += num_samples / self.sample_rate_hz

    def _ready(self) -> bool:
        return len(self._fifo) >= self.frame_samples

    def _needed_arrival(self) -> float:
        needed = self._num_pushed - len(self._fifo) + self.frame_samples  # total index after this frame
        while len(self._arrivals) > 1 and self._arrivals[0][0] < needed:
            self._arrivals.popleft()
        return self._arrivals[0][1]

    def _drop_frames(self, num: int) -> int:
        num = min(num, len(self._fifo) // self.frame_samples - 1)
        if num > 0:
            self._fifo.pop(num * self.frame_samples)
            self._consumed(num * self.frame_samples)
        return max(0, num)

    async def next_frame(self) -> np.ndarray | None:
        """The next frame (float32, ``frame_samples`` long) at its slot; None once closed."""
        ready = await self._slot()
        if ready is None:
            return None
        if ready and self._media_next is not None:
            self._anchor = (self._last_slot - self._media_next, self._clock())
        out = self._fifo.pop(self.frame_samples)
        self._consumed(len(out))
        if len(out) < self.frame_samples:  # underrun: what there is, then silence
            out = np.concatenate([out, np.zeros(self.frame_samples - len(out), dtype=np.float32)])
        return out


class VideoPacer(_Pacer):
    """RGB frames -> one frame per period on the slot clock; an underrun repeats the last frame.

    With ``follow`` (an :meth:`AudioPacer.anchor`), video follows the audio's clock (lip sync): a frame
    whose media time plays later in the audio than its slot is held back (the grid moves with it), frames
    whose audio has already played are skipped, and video does not trim latency on its own (the audio
    pacer does, and video follows). Frames then need their media time (``push(..., media_s=)``).
    """

    def __init__(
        self,
        fps: float,
        config: PacingConfig | None = None,
        *,
        active: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        follow: Callable[[], float | None] | None = None,
        sync_tolerance_s: float = 0.005,
    ) -> None:
        config = config or PacingConfig()
        super().__init__(1.0 / fps, config, active, clock)
        self.fps = fps
        self._follow = follow
        self._sync_tolerance_s = sync_tolerance_s
        self._frames: deque[tuple[np.ndarray, float, float | None]] = deque()  # (frame, arrival, media time)
        self._max_frames = max(2, int(fps * config.max_buffer_s))
        self._last: np.ndarray | None = None
        self.num_dropped = 0  # frames dropped because the buffer was full

    def push(self, frame: np.ndarray, now: float | None = None, media_s: float | None = None) -> None:
        """Queue one (H, W, 3) uint8 frame (``media_s``: its pts in seconds, for following the audio)."""
        if self._closed:
            return
        if len(self._frames) >= self._max_frames:
            self._frames.popleft()
            self.num_dropped += 1
        self._frames.append((frame, self._clock() if now is None else now, media_s))
        self._notify()

    def _ready(self) -> bool:
        return bool(self._frames)

    def _needed_arrival(self) -> float:
        return self._frames[0][1]

    def _drop_frames(self, num: int) -> int:
        num = min(num, len(self._frames) - 1)
        for _ in range(max(0, num)):
            self._frames.popleft()
        return max(0, num)

    def _note_lead(self, lead: float) -> None:
        if self._audio_anchor() is None:  # following the audio: its pacer trims latency, video follows
            super()._note_lead(lead)

    def _audio_anchor(self) -> float | None:
        return self._follow() if self._follow is not None else None

    async def _follow_audio(self) -> None:
        """Hold the head frame until its audio plays, or skip frames whose audio already played.

        Either way the grid is re-derived from the audio's clock, so the following frames keep in step.
        """
        anchor = self._audio_anchor()
        media_s = self._frames[0][2]
        if anchor is None or media_s is None:
            return
        now = self._clock()
        early = anchor + media_s - now
        if early > self._sync_tolerance_s:
            await asyncio.sleep(min(early, self.config.max_buffer_s))
        elif early < -self._sync_tolerance_s:
            while len(self._frames) > 1 and (nxt := self._frames[1][2]) is not None and anchor + nxt <= now:
                self._frames.popleft()
                self.stats.sync_skips += 1
            media_s = self._frames[0][2] if self._frames[0][2] is not None else media_s
        else:
            return
        self.stats.sync_moves += 1
        self._t0 = anchor + media_s - (self._n - 1) * self.period_s  # this frame's slot: where its audio plays

    async def next_frame(self) -> tuple[np.ndarray, bool] | None:
        """``(frame, repeated)`` at its slot; None once closed. Before any frame exists it waits."""
        while True:
            ready = await self._slot()
            if ready is None:
                return None
            if ready:
                await self._follow_audio()
                if self._closed:
                    return None
                if self._frames:
                    self._last = self._frames.popleft()[0]
                    return self._last, False
            if self._last is not None:
                return self._last, True
