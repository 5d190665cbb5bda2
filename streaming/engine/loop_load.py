"""How busy the event loop is, and what one more session would cost it.

The step-cost projections (:mod:`streaming.engine.cost`) price the model's work on the worker thread. A
session also costs the event loop: its transport reads input frames, writes output packets, resamples and
paces, 50–100 messages a second for audio. With a cheap model on a CPU server the loop saturates first,
and the step projections would admit sessions into a loop that can no longer deliver their chunks on time.

A sampler task on the loop reads the loop thread's own CPU time (``time.thread_time`` called from the loop
is the loop thread's) every ``interval_s``: busy = CPU seconds / wall seconds over a sliding window. The
cost of sessions is learnt as a least-squares line through (sessions, busy) samples taken in steady state
(no session started or ended during the interval: connection set-up and teardown are bursts, not the
per-session streaming cost), so a fixed base load (timers, scrapes) is the intercept and not charged to
each session. The line is kept after sessions leave, so a burst of new sessions is priced by what the last
ones cost. The line's samples age as the step-cost estimates do: a sample older than ``fresh_s`` relaxes
towards the calmest busy share seen at its session count, with a half-life of ``half_life_s``, so a flood
on the loop while a session ran (a client's ``ping`` storm) inflates the line only for a while, not until
the same number of sessions runs again. Admission projects ``base + sessions x slope`` like the step-cost
projections, not the momentary busy share (a connection storm passes; the lateness safety net covers what
the line misses). The same sampler measures loop lag (how late its own wake-ups are), which shows CPU
starvation busy time cannot see.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class LoopSample:
    """One sampling interval."""

    sessions: int
    busy: float  # loop-thread CPU seconds per wall second
    lag_s: float  # how late the sampler woke


class LoopLoad:
    """Samples the running loop's busy share and lag; projects the busy share for more sessions."""

    def __init__(
        self,
        interval_s: float = 0.25,
        window_s: float = 2.0,
        fit_samples: int = 240,
        *,
        fresh_s: float = 5.0,
        half_life_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.window: deque[LoopSample] = deque(maxlen=max(1, round(window_s / interval_s)))
        self.fresh_s = fresh_s
        self.half_life_s = half_life_s
        self.clock = clock
        # Samples for the cost line, (sessions, busy, clock time); kept across idle periods (a property of
        # the models and transports), aged towards the calmest share seen at each session count.
        self._fit: deque[tuple[int, float, float]] = deque(maxlen=fit_samples)
        self._calmest: dict[int, float] = {}

    def observe(self, sessions: int, busy: float) -> None:
        """Add one steady interval's busy share with ``sessions`` sessions to the cost line."""
        self._fit.append((sessions, busy, self.clock()))
        self._calmest[sessions] = min(self._calmest.get(sessions, busy), busy)

    def _aged(self, sessions: int, busy: float, at: float, now: float) -> float:
        stale_for_s = now - at - self.fresh_s
        if stale_for_s <= 0:
            return busy
        calmest = self._calmest[sessions]
        return calmest + (busy - calmest) * 0.5 ** (stale_for_s / self.half_life_s)

    async def run(self, membership: Callable[[], tuple[int, int]]) -> None:
        """Sample forever (cancel to stop).

        ``membership`` returns (sessions served, joins + leaves so far): an interval with a join or leave
        is not steady and stays out of the cost line.
        """
        cpu, wall = time.thread_time(), time.monotonic()
        _, changes = membership()
        while True:
            await asyncio.sleep(self.interval_s)
            now_cpu, now_wall = time.thread_time(), time.monotonic()
            elapsed = now_wall - wall
            sessions, now_changes = membership()
            sample = LoopSample(sessions, (now_cpu - cpu) / elapsed, max(0.0, elapsed - self.interval_s))
            self.window.append(sample)
            if sessions and now_changes == changes:
                self.observe(sessions, sample.busy)
            cpu, wall, changes = now_cpu, now_wall, now_changes

    @property
    def busy(self) -> float:
        """Mean busy share over the window (0 before the first sample)."""
        return sum(s.busy for s in self.window) / len(self.window) if self.window else 0.0

    @property
    def lag_s(self) -> float:
        """Worst sampler lag over the window."""
        return max((s.lag_s for s in self.window), default=0.0)

    def cost_line(self) -> tuple[float, float]:
        """(base busy share, busy share per session) from the steady samples; (0, 0) until there are any."""
        if not self._fit:
            return 0.0, 0.0
        now = self.clock()
        n = [float(s) for s, _, _ in self._fit]
        b = [self._aged(s, busy, at, now) for s, busy, at in self._fit]
        mean_n, mean_b = sum(n) / len(n), sum(b) / len(b)
        var = sum((x - mean_n) ** 2 for x in n)
        if var < 1e-9:  # one session count only: charge everything to the sessions (conservative)
            return 0.0, mean_b / mean_n
        slope = max(0.0, sum((x - mean_n) * (y - mean_b) for x, y in zip(n, b, strict=True)) / var)
        return max(0.0, mean_b - slope * mean_n), slope

    def per_session(self) -> float:
        """Busy share one session adds."""
        return self.cost_line()[1]

    def projected_busy(self, sessions: int) -> float:
        """Busy share the line predicts for ``sessions`` sessions."""
        base, slope = self.cost_line()
        return base + sessions * slope

    def status(self) -> dict[str, float]:
        """For /healthz."""
        base, slope = self.cost_line()
        return {
            "busy": round(self.busy, 4),
            "lag_ms": round(self.lag_s * 1000, 2),
            "busy_base": round(base, 4),
            "busy_per_session": round(slope, 5),
        }
