"""How much of a core the event loop needs, and what one more session would add.

The step-cost projections (:mod:`streaming.engine.cost`) price the model's work on the worker thread. A
session also costs the event loop: its transport reads input frames, writes output packets, resamples and
paces, 50–100 messages a second for audio. With a cheap model on a CPU server the loop saturates first,
and the step projections would admit sessions into a loop that can no longer deliver their chunks on time.

A sampler task on the loop reads the loop thread's own scheduler accounting every ``interval_s``: its CPU
share (busy) and its **demand**, the share of wall time it was on a CPU *or runnable and waiting for one*.
On Linux ``/proc/thread-self/schedstat`` (read from the loop, so it is the loop thread's) gives both;
elsewhere only the CPU time (``time.thread_time``) is known and demand is the busy share. CPU time alone
misses what makes chunks late on a shared or oversubscribed machine: at 64 WebSocket pitch sessions on a
loaded 2-core VM the loop thread was on CPU 41 % of the time but waited on a run queue another 35 %, so a
CPU line projected room for ~120 sessions while chunks were already late. A thread that is runnable most of
the time is saturated whatever its CPU share, so demand is what admission compares with its limit.

The cost of sessions is learnt from samples taken in steady state (no session started or ended during the
interval: connection set-up and teardown are bursts, not the per-session streaming cost):

- a least-squares line through (sessions, busy), so a fixed base load (timers, scrapes) is the intercept
  and not charged to each session. With one session count only, everything is charged to the sessions.
  This line prices sessions while few have been measured: there the CPU share is the cautious signal,
  because a single count cannot tell a session's cost from other loop work (a flood of offers beside one
  session read 0.23 busy but 0.37 demand on the loaded VM; charged to that session, demand would have
  refused a second);
- once ``TOP_MIN_SESSIONS`` or more ran, the demand at the largest count measured
  (:meth:`LoopLoad.top_rate`): demand grows faster than linearly near the limit (run-queue wait rises with
  the busy share), and this is the rate that predicts it. Each session is priced at the steeper of the two.

Samples are kept after sessions leave, so a burst of new sessions is priced by what the last ones cost,
and age as the step-cost estimates do: a sample older than ``fresh_s`` relaxes towards the calmest share
seen at its session count, with a half-life of ``half_life_s``, so a flood on the loop while a session ran
(a client's ``ping`` storm) inflates the price only for a while, not until the same number of sessions runs
again.

A projection is trusted up to twice the largest session count measured; sessions past that are priced at
least at ``prior_per_session`` (a cold server, with nothing measured, prices every session at the prior).
Without that, a burst of starts on a cold server (or far past anything measured) was never refused for the
loop. The prior is deliberately generous (1 % of a core per session: a cold burst is capped at ~70 sessions
under a 0.7 limit), so it only stops bursts far above what the tests or a first measurement start.
The same sampler measures loop lag (how late its own wake-ups are).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCHEDSTAT = Path("/proc/thread-self/schedstat")
TOP_MIN_SESSIONS = 8  # the largest measured count prices sessions by its own rate from here on (see top_rate)


def read_schedstat(path: Path = SCHEDSTAT) -> tuple[float, float] | None:
    """(seconds on CPU, seconds runnable but waiting on a run queue) of the calling thread; None if unknown.

    The file's first two fields are nanoseconds; a kernel without scheduler statistics has no such file.
    """
    try:
        fields = path.read_text().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def thread_times() -> tuple[float, float]:
    """The calling thread's (CPU seconds, run-queue wait seconds); wait is 0 where the OS does not say."""
    times = read_schedstat()
    return times if times is not None else (time.thread_time(), 0.0)


@dataclass
class LoopSample:
    """One sampling interval."""

    sessions: int
    busy: float  # loop-thread CPU seconds per wall second
    wait: float  # seconds runnable but not running (on a run queue) per wall second
    lag_s: float  # how late the sampler woke

    @property
    def demand(self) -> float:
        """Share of a core the loop wanted: on CPU or waiting for one."""
        return self.busy + self.wait


class LoopLoad:
    """Samples the running loop's CPU, run-queue wait and lag; projects its demand for more sessions."""

    def __init__(
        self,
        interval_s: float = 0.25,
        window_s: float = 2.0,
        fit_samples: int = 240,
        *,
        fresh_s: float = 5.0,
        half_life_s: float = 10.0,
        prior_per_session: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        times: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.window: deque[LoopSample] = deque(maxlen=max(1, round(window_s / interval_s)))
        self.fresh_s = fresh_s
        self.half_life_s = half_life_s
        self.prior_per_session = prior_per_session
        self.clock = clock
        # The loop thread's cumulative (CPU s, wait s); called on the loop. Tests pass synthetic readings.
        if times is not None:
            self.times, self.source = times, "given"
        elif read_schedstat() is not None:
            self.times, self.source = thread_times, "schedstat"
        else:
            self.times, self.source = (lambda: (time.thread_time(), 0.0)), "thread_time"
        # Steady samples, (sessions, busy, demand, clock time); kept across idle periods (a property of the
        # models and transports), each share aged towards the calmest seen at its session count.
        self._fit: deque[tuple[int, float, float, float]] = deque(maxlen=fit_samples)
        self._calmest: dict[int, tuple[float, float]] = {}

    def observe(self, sessions: int, busy: float, demand: float | None = None) -> None:
        """Add one steady interval with ``sessions`` sessions: its CPU share and demand (default: the CPU share)."""
        demand = busy if demand is None else demand
        self._fit.append((sessions, busy, demand, self.clock()))
        calm_busy, calm_demand = self._calmest.get(sessions, (busy, demand))
        self._calmest[sessions] = (min(calm_busy, busy), min(calm_demand, demand))

    def _aged(self, which: int, sessions: int, share: float, at: float, now: float) -> float:
        """``share`` (``which``: 0 busy, 1 demand) relaxed towards the calmest at its count once stale."""
        stale_for_s = now - at - self.fresh_s
        if stale_for_s <= 0:
            return share
        calmest = self._calmest[sessions][which]
        return calmest + (share - calmest) * 0.5 ** (stale_for_s / self.half_life_s)

    async def run(self, membership: Callable[[], tuple[int, int]]) -> None:
        """Sample forever (cancel to stop).

        ``membership`` returns (sessions served, joins + leaves so far): an interval with a join or leave
        is not steady and stays out of the cost line.
        """
        (cpu, waited), wall = self.times(), time.monotonic()
        _, changes = membership()
        while True:
            await asyncio.sleep(self.interval_s)
            (now_cpu, now_waited), now_wall = self.times(), time.monotonic()
            elapsed = now_wall - wall
            sessions, now_changes = membership()
            sample = LoopSample(
                sessions,
                max(0.0, now_cpu - cpu) / elapsed,
                max(0.0, now_waited - waited) / elapsed,
                max(0.0, elapsed - self.interval_s),
            )
            self.window.append(sample)
            if sessions and now_changes == changes:
                self.observe(sessions, sample.busy, sample.demand)
            cpu, waited, wall, changes = now_cpu, now_waited, now_wall, now_changes

    def _mean(self, field: str) -> float:
        return sum(getattr(s, field) for s in self.window) / len(self.window) if self.window else 0.0

    @property
    def busy(self) -> float:
        """Mean CPU share over the window (0 before the first sample)."""
        return self._mean("busy")

    @property
    def wait(self) -> float:
        """Mean run-queue wait share over the window (0 where the OS does not report it)."""
        return self._mean("wait")

    @property
    def demand(self) -> float:
        """Mean demand (CPU + run-queue wait) over the window."""
        return self._mean("demand")

    @property
    def lag_s(self) -> float:
        """Worst sampler lag over the window."""
        return max((s.lag_s for s in self.window), default=0.0)

    def cost_line(self) -> tuple[float, float]:
        """(base CPU share, CPU share per session) from the steady samples; (0, 0) until there are any."""
        if not self._fit:
            return 0.0, 0.0
        now = self.clock()
        n = [float(s) for s, _, _, _ in self._fit]
        d = [self._aged(0, s, busy, at, now) for s, busy, _, at in self._fit]
        mean_n, mean_d = sum(n) / len(n), sum(d) / len(d)
        var = sum((x - mean_n) ** 2 for x in n)
        if var < 1e-9:  # one session count only: charge everything to the sessions (conservative)
            return 0.0, mean_d / mean_n
        slope = max(0.0, sum((x - mean_n) * (y - mean_d) for x, y in zip(n, d, strict=True)) / var)
        return max(0.0, mean_d - slope * mean_n), slope

    def per_session(self) -> float:
        """CPU share one session adds, by the line."""
        return self.cost_line()[1]

    def trusted_sessions(self) -> int:
        """Session counts the line may be extrapolated to: twice the largest it was fitted on (0 when cold)."""
        return 2 * max((s for s, _, _, _ in self._fit), default=0)

    def top_rate(self) -> float:
        """Demand per session above the line's base at the largest count measured (0 below ``TOP_MIN_SESSIONS``).

        The median of that count's (aged) demand samples: what the sessions cost while they stream (most of
        the samples), not in the few intervals they sat idle after joining. A line through all counts
        under-prices the next sessions near the limit (one on demand admitted 40 pitch sessions at 0.77 on
        the loaded VM, where 32 had cost 0.64); the rate from the base through this point does not.
        """
        top = max((s for s, _, _, _ in self._fit), default=0)
        if top < TOP_MIN_SESSIONS:
            return 0.0
        now = self.clock()
        demands = sorted(self._aged(1, s, demand, at, now) for s, _, demand, at in self._fit if s == top)
        return max(0.0, demands[len(demands) // 2] - self.cost_line()[0]) / top

    def projected_demand(self, sessions: int) -> float:
        """Demand predicted for ``sessions`` sessions.

        The base plus each session at the steeper of the line's slope and :meth:`top_rate`; past the trusted
        range, each further session costs at least the prior.
        """
        base, slope = self.cost_line()
        rate = max(slope, self.top_rate())
        trusted = self.trusted_sessions()
        within = min(sessions, trusted)
        return base + within * rate + max(0, sessions - trusted) * max(rate, self.prior_per_session)

    def status(self) -> dict[str, float | str]:
        """For /healthz."""
        base, slope = self.cost_line()
        return {
            "busy": round(self.busy, 4),
            "wait": round(self.wait, 4),
            "demand": round(self.demand, 4),
            "lag_ms": round(self.lag_s * 1000, 2),
            "busy_base": round(base, 4),
            "busy_per_session": round(slope, 5),
            "demand_per_session_at_top": round(self.top_rate(), 5),
            "trusted_sessions": self.trusted_sessions(),
            "source": self.source,
        }
