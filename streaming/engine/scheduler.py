"""The scheduler: which sessions step next, in which batches, and whether one more session fits.

It runs on the event loop and never touches a model or torch (as in vLLM's split): ``schedule`` turns the
sessions' clocks into a :class:`SchedulerOutput` of batches (plain data: ids, input chunks, deadlines), the
runner executes it on the worker thread, and ``update_from_output`` hands the results back to sessions.
Admission control lives here too, because it is a projection of the same step costs.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from models.base import ControlEvent, Pacing, StepInput, StepOutput, StreamSpec
from models.errors import CapacityError, CausalcastError
from streaming.engine.cost import BatchBuckets, StepCostModel
from streaming.engine.loop_load import LoopLoad
from streaming.session import Session, SessionConfig, latency_allowance_s

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the scheduler needs to know of a model: its stream spec and largest batch."""

    spec: StreamSpec
    max_batch_size: int
    pads_to_bucket: bool = False


@dataclass
class ScheduledSession:
    """One session's share of a batch."""

    session_id: str
    input: StepInput
    ready_time: float  # when its chunk became due
    deadline: float  # when its chunk must be done


@dataclass
class ScheduledBatch:
    """Sessions of one model stepped together, padded to ``padded_batch_size``."""

    model: str
    sessions: list[ScheduledSession]
    padded_batch_size: int


@dataclass
class SchedulerOutput:
    """One engine turn: control events to apply first, then batches to step."""

    events: dict[str, list[ControlEvent]] = field(default_factory=dict)
    batches: list[ScheduledBatch] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing to do this turn."""
        return not self.events and not self.batches


@dataclass
class StepTiming:
    """How long one batch step took."""

    model: str
    batch_size: int
    padded_batch_size: int
    seconds: float


@dataclass
class RunnerOutput:
    """What the runner hands back for a :class:`SchedulerOutput`."""

    outputs: dict[str, StepOutput] = field(default_factory=dict)
    notices: dict[str, list[dict]] = field(default_factory=dict)  # replies to control events
    errors: dict[str, CausalcastError] = field(default_factory=dict)  # per-session failures
    timings: list[StepTiming] = field(default_factory=list)


@dataclass(frozen=True)
class AdmissionLimits:
    """When to refuse a new session."""

    max_utilization: float = 0.8  # share of each chunk period the device may be busy stepping
    max_sessions: int = 256
    # Share of one core the event loop may need for the transports: on CPU or waiting on a run queue for one
    # (see loop_load.py; at ~0.76 pitch sessions went late on a loaded 2-core VM).
    max_loop_busy: float = 0.7
    # What a session is assumed to cost the loop before (or far past) anything measured: caps a cold burst.
    loop_prior_per_session: float = 0.01
    # Safety net behind the projections: refuse while more than this share of recent chunks was late
    # (the projections price model steps; a saturated event loop or CPU shows up only here).
    max_recent_late_rate: float = 0.01
    recent_window_s: float = 2.0
    # Step-cost estimates (cost.py) and the event loop's per-session line (loop_load.py) age: unmeasured this
    # long, an estimate relaxes towards its baseline (calmest reading) with this half-life, and a start
    # refused on a stale step cost first probes that batch size (at most once per probe interval).
    cost_fresh_s: float = 5.0
    cost_half_life_s: float = 10.0
    probe_interval_s: float = 10.0


@dataclass
class DeliveryReport:
    """What update_from_output did, for metrics."""

    chunks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    late: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Scheduler:
    """Tracks sessions per model, batches the due ones, and admits new ones against step costs."""

    def __init__(
        self,
        models: dict[str, ModelInfo],
        limits: AdmissionLimits,
        session_config: SessionConfig | None = None,
        loop_load: LoopLoad | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models = models
        self.limits = limits
        self.loop_load = loop_load  # the event loop's measured load (None: not priced, e.g. unit tests)
        session_config = session_config or SessionConfig()
        self.allowance_s = {name: latency_allowance_s(info.spec, session_config) for name, info in models.items()}
        self.buckets = {name: BatchBuckets(info.max_batch_size) for name, info in models.items()}
        self.costs = {
            name: StepCostModel(
                self.buckets[name],
                info.pads_to_bucket,
                fresh_s=limits.cost_fresh_s,
                half_life_s=limits.cost_half_life_s,
                clock=clock,
            )
            for name, info in models.items()
        }
        self.sessions: dict[str, Session] = {}
        self._num_opening: dict[str, int] = defaultdict(int)
        self._marked: set[str] = set()  # sessions to look at next turn (input or events arrived)
        self._clock: list[tuple[float, str]] = []  # heap of (due time, session id) for clock-paced sessions
        self._clock_due: dict[str, float] = {}  # the one live heap entry per session (others are stale)
        self._recent: deque[tuple[float, int, int]] = deque()  # (time, chunks, late) per turn
        self.membership_changes = 0  # joins + leaves so far (the loop-load sampler's steadiness test)

    # -- admission -----------------------------------------------------------------------------------
    def count(self, model: str) -> int:
        """Sessions of ``model`` running or being opened."""
        return sum(1 for s in self.sessions.values() if s.model == model) + self._num_opening[model]

    def _counts(self, extra: dict[str, int] | None = None) -> dict[str, int]:
        return {name: self.count(name) + (extra or {}).get(name, 0) for name in self.models}

    def utilization(self, extra: dict[str, int] | None = None) -> float:
        """Projected share of each chunk period spent stepping, with ``extra`` sessions per model."""
        counts = self._counts(extra)
        return sum(self.costs[m].seconds_per_chunk(n) / self.models[m].spec.chunk_s for m, n in counts.items())

    def turn_seconds(self, extra: dict[str, int] | None = None) -> float:
        """Projected duration of one engine turn that steps every session once."""
        return sum(self.costs[m].seconds_per_chunk(n) for m, n in self._counts(extra).items())

    def reserve(self, model: str) -> None:
        """Admit one more session of ``model`` or raise :class:`CapacityError` saying why.

        The first session is always admitted (nothing runs that it could make late). After that: the
        event loop's projected demand (its transports' work on CPU plus its run-queue wait, :mod:`loop_load`)
        must stay under its limit, recent chunks must be on time (the safety net), and two projections of
        model steps must hold with the new session: throughput (the device busy at most ``max_utilization``
        of real time) and latency (a chunk that falls due while a full turn is in flight waits for it and
        then for its own turn: twice the turn must fit every served model's allowance, so no existing
        session becomes late).
        """
        num_total = sum(self.count(m) for m in self.models)
        if num_total >= self.limits.max_sessions:
            raise CapacityError(f"server at capacity: {num_total} sessions is the configured maximum", "max_sessions")
        if num_total == 0:
            # Admission protects running sessions; with none there is nothing to protect, and a cost
            # estimate inflated by a transient (or a model too slow for this device) must not lock
            # everyone out. The session's stats then show whether it keeps up.
            self._num_opening[model] += 1
            return
        if self.loop_load is not None:
            demand = self.loop_load.projected_demand(num_total + 1)
            if demand > self.limits.max_loop_busy:
                load = self.loop_load
                measured = "" if num_total + 1 <= load.trusted_sessions() else ", beyond what it has measured"
                raise CapacityError(
                    f"server at capacity: moving media for {num_total + 1} sessions would need its event loop "
                    f"{demand:.0%} of a core (on CPU or waiting for one{measured}; limit "
                    f"{self.limits.max_loop_busy:.0%}; now {load.demand:.0%}: {load.busy:.0%} on CPU, "
                    f"{load.wait:.0%} waiting)",
                    "event_loop",
                )
        chunks, late = self.recent_lateness()
        if chunks >= 50 and late > self.limits.max_recent_late_rate * chunks:
            raise CapacityError(
                f"server at capacity: it is running behind ({late} of the last {chunks} chunks were late)",
                "running_late",
            )
        n = self.count(model) + 1
        projected = self.utilization({model: 1})
        if projected > self.limits.max_utilization:
            need_ms = self.costs[model].seconds_per_chunk(n) * 1000
            raise CapacityError(
                f"server at capacity: {n} '{model}' sessions would need {need_ms:.1f} ms of every "
                f"{self.models[model].spec.chunk_ms:g} ms chunk; with the other models the device would be "
                f"{projected:.0%} busy (limit {self.limits.max_utilization:.0%})",
                "utilization",
            )
        worst_s = 2 * self.turn_seconds({model: 1})
        served = [m for m, c in self._counts({model: 1}).items() if c]
        tightest = min(served, key=lambda m: self.allowance_s[m])
        if worst_s > self.allowance_s[tightest]:
            raise CapacityError(
                f"server at capacity: with {n} '{model}' sessions a chunk could wait {worst_s * 1000:.1f} ms "
                f"(a step in flight, then its own), over the {self.allowance_s[tightest] * 1000:g} ms "
                f"'{tightest}' sessions may take",
                "latency",
            )
        self._num_opening[model] += 1

    def stale_costs(self, model: str) -> dict[str, list[int]]:
        """Batch sizes, per model, whose old estimates the projection of one more ``model`` session rests on."""
        stale = {m: self.costs[m].stale_sizes(n) for m, n in self._counts({model: 1}).items()}
        return {m: sizes for m, sizes in stale.items() if sizes}

    def recent_lateness(self, now: float | None = None) -> tuple[int, int]:
        """Chunks delivered and chunks late over the recent window."""
        now = time.monotonic() if now is None else now
        while self._recent and self._recent[0][0] < now - self.limits.recent_window_s:
            self._recent.popleft()
        return sum(c for _, c, _ in self._recent), sum(n for _, _, n in self._recent)

    def unreserve(self, model: str) -> None:
        """Release a reservation (the session was added or its open failed)."""
        self._num_opening[model] -= 1

    # -- membership ----------------------------------------------------------------------------------
    def add(self, session: Session) -> None:
        """Start scheduling an opened, started session (turns its reservation into membership)."""
        self.unreserve(session.model)
        self.sessions[session.id] = session
        self.membership_changes += 1
        self.mark(session)

    def remove(self, session_id: str) -> Session | None:
        """Stop scheduling a session (stale heap entries are skipped later)."""
        self._marked.discard(session_id)
        self._clock_due.pop(session_id, None)
        session = self.sessions.pop(session_id, None)
        self.membership_changes += session is not None
        if not self.sessions:
            self._recent.clear()  # lateness of sessions that are gone protects no one
        return session

    def mark(self, session: Session) -> None:
        """Look at this session next turn (it got input or an event)."""
        self._marked.add(session.id)

    # -- the turn ------------------------------------------------------------------------------------
    # A turn looks only at sessions that changed (marked by input or events) and at clock-paced sessions
    # whose due time has come (a heap), never at every session: with many sessions arriving at spread
    # phases the engine runs many small turns, and a full scan each time would cost O(n^2) per chunk.

    def _candidates(self, now: float) -> set[str]:
        candidates, self._marked = self._marked, set()
        while self._clock and self._clock[0][0] <= now:
            due, session_id = heapq.heappop(self._clock)
            if self._clock_due.get(session_id) == due:  # else a stale entry, superseded
                del self._clock_due[session_id]
                candidates.add(session_id)
        return candidates

    def _wake_at(self, session_id: str, when: float) -> None:
        if self._clock_due.get(session_id) != when:
            self._clock_due[session_id] = when
            heapq.heappush(self._clock, (when, session_id))

    def _follow_up(self, session: Session, now: float) -> None:
        """Keep track of a session's next due time after it was looked at or stepped."""
        ready = session.ready_time()
        if session.spec.pacing is Pacing.CLOCK:
            if ready is not None:
                self._wake_at(session.id, ready)
            elif session.running and session.outbox.media_full:  # the client is slow: look again later
                self._wake_at(session.id, now + session.spec.chunk_s)
        elif ready is not None:  # more complete input chunks are waiting
            self._marked.add(session.id)

    def schedule(self, now: float) -> SchedulerOutput:
        """Collect pending control events and the due sessions, batched per model, earliest deadline first."""
        plan = SchedulerOutput()
        due: dict[str, list[Session]] = defaultdict(list)
        for session_id in self._candidates(now):
            session = self.sessions.get(session_id)
            if session is None or not session.running:
                continue
            if session.has_events:
                plan.events[session.id] = session.take_events(now)
            ready = session.ready_time()
            if ready is not None and ready <= now:
                due[session.model].append(session)
            else:
                self._follow_up(session, now)
        for model, sessions in due.items():
            sessions.sort(key=Session.deadline)
            max_batch = self.models[model].max_batch_size
            for start in range(0, len(sessions), max_batch):
                group = sessions[start : start + max_batch]
                scheduled = []
                for s in group:
                    ready, deadline = s.ready_time(), s.deadline()
                    scheduled.append(ScheduledSession(s.id, s.take_input(), ready, deadline))
                plan.batches.append(ScheduledBatch(model, scheduled, self.buckets[model].bucket(len(group))))
        plan.batches.sort(key=lambda b: b.sessions[0].deadline)
        return plan

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until the next clock-paced chunk falls due (None: only input or events wake us)."""
        while self._clock and self._clock_due.get(self._clock[0][1]) != self._clock[0][0]:
            heapq.heappop(self._clock)
        if self._marked:
            return 0.0
        return max(0.0, self._clock[0][0] - now) if self._clock else None

    def update_from_output(
        self, plan: SchedulerOutput, result: RunnerOutput, now: float, fail: Callable[[Session, CausalcastError], None]
    ) -> DeliveryReport:
        """Hand step outputs and notices to their sessions; record step costs; fail errored sessions."""
        report = DeliveryReport()
        for timing in result.timings:
            self.costs[timing.model].observe(timing.batch_size, timing.padded_batch_size, timing.seconds)
        for session_id, notices in result.notices.items():
            session = self.sessions.get(session_id)
            if session is not None:
                for notice in notices:
                    session.notify(notice)
        for batch in plan.batches:
            for item in batch.sessions:
                session = self.sessions.get(item.session_id)
                output = result.outputs.get(item.session_id)
                if session is None or output is None or not session.running:
                    continue
                late = session.deliver(output, item.ready_time, item.deadline, now)
                if not output.idle:
                    report.chunks[batch.model] += 1
                    report.late[batch.model] += int(late)
        for session_id, error in result.errors.items():
            session = self.sessions.get(session_id)
            if session is not None:
                fail(session, error)
        for batch in plan.batches:
            for item in batch.sessions:
                if (session := self.sessions.get(item.session_id)) is not None and session.running:
                    self._follow_up(session, now)
        num_chunks = sum(report.chunks.values())
        if num_chunks:
            self._recent.append((now, num_chunks, sum(report.late.values())))
        return report
