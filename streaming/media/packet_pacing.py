"""Pacing pre-encoded packets: each released at its pts on a clock all tracks of a stream share.

A shared stream's viewers get packets encoded once for many (:mod:`streaming.broadcast`); they cannot be
re-cut into frames, padded or repeated the way the grid pacers of :mod:`streaming.media.pacing` do. A
:class:`PacketPacer` per track holds them until the stream's :class:`MediaClock` says their media time
plays; audio and video ask the same clock, so they leave in sync by construction.

Everything runs on the event loop; ``push`` is cheap and never blocks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from streaming.media.pacing import PacingConfig


@dataclass
class ClockStats:
    """What a :class:`MediaClock` did; all counts since it started."""

    packets: int = 0
    late: int = 0  # packets that arrived after their slot plus grace (the clock moved later)
    late_s: float = 0.0  # total the clock moved later
    trimmed_s: float = 0.0  # total the clock moved earlier to cut latency
    reanchors: int = 0  # the media time jumped (or started): the clock was set from scratch


class MediaClock:
    """Media time (seconds of pts) -> monotonic release time, one clock for all tracks of a stream.

    Pre-encoded packets (a shared stream's audio and video, encoded once for many viewers) cannot be
    re-cut into frames, dropped or repeated the way :class:`AudioPacer` / :class:`VideoPacer` do; they are
    released when the clock says their pts plays. Because the audio and the video track of a stream ask
    the same clock, a packet of either kind with the same media time is released at the same moment: A/V
    sync holds by construction, whatever the clock does.

    Design of the clock (``release = anchor + media_s``):

    * the anchor is set by the first packet (released ``margin`` after it arrived), and again when the
      media time jumps by more than ``max_jump_s`` against the wall clock;
    * a packet that *arrived* more than ``grace`` after its slot moves the anchor later by its lateness
      (the stream was late: later packets keep their spacing instead of bursting out to catch up). A
      packet that arrived in time but went out late because the event loop woke late does not: the
      packets behind it are due already and go out at once, so loop hiccups never add lasting latency;
    * once a window, if the smallest lead seen (slot minus arrival) exceeds ``margin + trim_above``, the
      anchor moves earlier by the excess, at most ``max_trim_s`` a window, so latency comes back after a
      late stretch within a few windows, each step a short burst.
    """

    def __init__(
        self,
        config: PacingConfig | None = None,
        *,
        max_jump_s: float = 1.0,
        max_trim_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = config or PacingConfig()
        self.config = config
        self.stats = ClockStats()
        self._clock = clock
        self._margin = config.margin_ms / 1000.0
        self._grace = (config.grace_ms if config.grace_ms is not None else 10.0) / 1000.0
        self._trim_above = config.trim_above_ms / 1000.0
        self._window_s = config.window_s
        self._max_jump_s = max_jump_s
        self._max_trim_s = max_trim_s
        self._anchor: float | None = None
        self._window_end = 0.0
        self._window_min_lead = math.inf

    def now(self) -> float:
        """The clock's current monotonic time."""
        return self._clock()

    def slot(self, media_s: float) -> float:
        """Release time of media time ``media_s`` (only after :meth:`arrived` anchored the clock)."""
        assert self._anchor is not None
        return self._anchor + media_s

    def arrived(self, media_s: float, now: float | None = None) -> None:
        """A packet of media time ``media_s`` arrived: anchor the clock if needed and note its lead."""
        now = self._clock() if now is None else now
        self.stats.packets += 1
        if self._anchor is None or abs(self._anchor + media_s - now) > self._max_jump_s:
            self._anchor = now + self._margin - media_s
            self.stats.reanchors += 1
            self._window_end, self._window_min_lead = now + self._window_s, math.inf
        self._window_min_lead = min(self._window_min_lead, self._anchor + media_s - now)
        if now >= self._window_end:
            excess = self._window_min_lead - self._margin
            if excess > self._trim_above:
                step = min(excess, self._max_trim_s)
                self._anchor -= step
                self.stats.trimmed_s += step
            self._window_end, self._window_min_lead = now + self._window_s, math.inf

    def arrived_late(self, lateness_s: float) -> None:
        """A packet arrived ``lateness_s`` after its slot; beyond grace the clock follows the stream."""
        if lateness_s > self._grace and self._anchor is not None:
            self._anchor += lateness_s
            self.stats.late += 1
            self.stats.late_s += lateness_s


@dataclass
class TimedPacket:
    """One pre-encoded unit waiting for its slot."""

    payload: bytes
    pts: int  # in the track's clock (``clock_hz``)
    key: bool = True
    arrival: float = 0.0  # monotonic time it was pushed


class PacketPacer:
    """One track's pre-encoded packets, released on a shared :class:`MediaClock` by their pts.

    Bounded: more than ``max_buffer_s`` of media waiting drops the oldest packets; for video (``keyed``)
    it then skips to the next key frame (and calls ``on_need_key``) so a decoder never gets a frame whose
    reference was dropped.
    """

    def __init__(
        self,
        clock: MediaClock,
        clock_hz: int,
        *,
        keyed: bool = False,
        max_buffer_s: float = 2.0,
        on_need_key: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self.clock_hz = clock_hz
        self.keyed = keyed
        self.max_buffer_s = max_buffer_s
        self.num_dropped = 0
        self.num_sent = 0
        self.num_key_sent = 0
        self._on_need_key = on_need_key
        self._packets: deque[TimedPacket] = deque()
        self._needs_key = keyed
        self._data = asyncio.Event()
        self._closed = False

    @property
    def buffered(self) -> int:
        """Packets waiting."""
        return len(self._packets)

    def push(self, packet: TimedPacket, now: float | None = None) -> None:
        """Queue a packet (never blocks)."""
        if self._closed:
            return
        if self._packets and (packet.pts - self._packets[0].pts) / self.clock_hz > self.max_buffer_s:
            self.num_dropped += len(self._packets)
            self._packets.clear()
            if self.keyed:
                self._needs_key = True
                if self._on_need_key is not None:
                    self._on_need_key()
        if self._needs_key:
            if not packet.key:
                self.num_dropped += 1
                return
            self._needs_key = False
        now = self.clock.now() if now is None else now
        packet.arrival = now
        self.clock.arrived(packet.pts / self.clock_hz, now)
        self._packets.append(packet)
        self._data.set()

    def close(self) -> None:
        """No more packets: :meth:`next_packet` returns None from now on."""
        self._closed = True
        self._data.set()

    async def next_packet(self) -> TimedPacket | None:
        """The next packet at its slot; None once closed."""
        while True:
            while not self._packets:
                if self._closed:
                    return None
                self._data.clear()
                await self._data.wait()
            if self._closed:
                return None
            slot = self.clock.slot(self._packets[0].pts / self.clock_hz)
            now = self.clock.now()
            if now < slot:
                # Look again after the sleep: the head may have been dropped, or the shared clock moved.
                await asyncio.sleep(slot - now)
                continue
            packet = self._packets.popleft()
            self.clock.arrived_late(packet.arrival - slot)
            self.num_sent += 1
            self.num_key_sent += int(packet.key)
            return packet
