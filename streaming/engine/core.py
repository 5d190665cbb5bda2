"""The engine: one per device. Schedules due sessions, steps them in batches on a worker thread, delivers.

Design of the loop: each turn the scheduler (on the event loop, cheap, no model code) turns the sessions'
clocks into batches; the whole plan then runs on the engine's single worker thread while the event loop
keeps moving bytes; the outputs come back to the loop and are stamped and queued per session. While the
worker is busy, more sessions fall due, so batches grow with load (continuous batching) without any
artificial wait, and latency at low load stays one step.

The heavy work on what a client sent (decoding and embedding an uploaded reference, a portrait, pushed
audio) runs on separate preparation threads (``prepare_session`` / ``prepare_event``, see models/base.py),
after admission and beside the steps, so it neither blocks the loop nor delays other sessions' chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from models.base import Generator
from models.errors import CapacityError, CausalcastError, ModelError, ParamError, ProtocolError
from streaming.auth import Access, ClientSessions
from streaming.engine.loop_load import LoopLoad
from streaming.engine.prepare import EventPreparer
from streaming.engine.runner import Runner
from streaming.engine.scheduler import AdmissionLimits, ModelInfo, Scheduler, SchedulerOutput
from streaming.metrics import Metrics
from streaming.session import Session, SessionConfig

log = logging.getLogger(__name__)

PREP_NICENESS = 10  # added to the preparation threads' nice value (Linux: per thread)


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine."""

    device: str = "cpu"
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)
    session: SessionConfig = field(default_factory=SessionConfig)
    warmup_max_batch: int = 64  # warm-up measures buckets up to this size (the rest is extrapolated)
    # Threads for prepare_session / prepare_event: two, so one session's long preparation does not hold up
    # every other session's start.
    num_prep_threads: int = 2


class Engine:
    """Serves sessions of several generators on one device."""

    def __init__(self, generators: dict[str, Generator], config: EngineConfig, metrics: Metrics | None = None) -> None:
        self.generators = generators
        self.config = config
        self.metrics = metrics or Metrics()
        self.runner = Runner(generators)
        self.loop_load = LoopLoad(
            fresh_s=config.limits.cost_fresh_s,
            half_life_s=config.limits.cost_half_life_s,
            prior_per_session=config.limits.loop_prior_per_session,
        )
        self.scheduler = Scheduler(
            {name: ModelInfo(g.spec, g.max_batch_size, g.pads_to_bucket) for name, g in generators.items()},
            config.limits,
            config.session,
            self.loop_load,
        )
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{config.device}")
        self._prep = ThreadPoolExecutor(
            config.num_prep_threads, thread_name_prefix=f"engine-{config.device}-prep", initializer=_background_thread
        )
        self.preparer = EventPreparer(generators, self._prep, config.session.max_pending_events)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop_load_task: asyncio.Task[None] | None = None
        self.metrics.loop_busy.set_function(lambda: self.loop_load.busy)
        self.metrics.loop_demand.set_function(lambda: self.loop_load.demand)
        self.metrics.loop_lag.set_function(lambda: self.loop_load.lag_s)
        self._stopping = False
        self.clients = ClientSessions()  # sessions held per client, against per-client caps
        self._probed_at: dict[tuple[str, int], float] = {}  # (model, batch size) -> when last probed
        self._draining = False

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Warm every model up (calibrating step costs for admission), then start the loop."""
        loop = asyncio.get_running_loop()
        for name in self.generators:
            buckets = [b for b in self.scheduler.buckets[name].sizes if b <= self.config.warmup_max_batch]
            seconds = await loop.run_in_executor(self._worker, self.runner.warmup, name, buckets)
            for size, s in seconds.items():
                self.scheduler.costs[name].observe(size, size, s)
            log.info("warmed up %s: %s", name, {b: f"{s * 1000:.2f} ms" for b, s in seconds.items()})
        self._task = asyncio.create_task(self._run(), name=f"engine-{self.config.device}")
        self._loop_load_task = asyncio.create_task(
            self.loop_load.run(lambda: (len(self.scheduler.sessions), self.scheduler.membership_changes)),
            name="loop-load",
        )

    async def stop(self) -> None:
        """Close every session and stop the loop and the worker."""
        self._stopping = True
        for session in list(self.scheduler.sessions.values()):
            await self.close_session(session, "server shutting down")
        for task in (self._task, self._loop_load_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._worker.shutdown(wait=True)
        self._prep.shutdown(wait=True, cancel_futures=True)

    @property
    def draining(self) -> bool:
        """True while the engine refuses new sessions and lets its running ones finish."""
        return self._draining

    def set_draining(self, draining: bool) -> None:
        """Refuse new sessions (``capacity``, reason: draining) while running ones finish; False takes them again.

        For rolling updates and scale-down: a process that drains can be removed once it serves no one.
        """
        self._draining = draining

    def wake(self, session: Session | None = None) -> None:
        """Tell the loop that a session got input or an event (or just to look again)."""
        if session is not None:
            self.scheduler.mark(session)
        self._wake.set()

    # -- sessions ------------------------------------------------------------------------------------
    def new_session(
        self,
        model: str,
        params: dict[str, Any],
        input_rate_hz: int | None,
        *,
        access: Access | None = None,
        share: bool = False,
    ) -> Session:
        """Validate a start request (cheap checks, on the loop) and build its (not yet opened) session.

        ``access``: who asks (None: a caller inside the server); its grant is checked first, before any
        parameter is looked at, and its per-client session cap when the session opens.
        """
        if access is not None:
            access.grant.check_start(model, share)
        generator = self.generators.get(model)
        if generator is None:
            raise ProtocolError(
                f"model '{model}' is not served here; loaded models: {sorted(self.generators)}", "unknown_model"
            )
        validated = generator.validate_params(params)
        if input_rate_hz is not None and generator.spec.input_audio is None:
            raise ParamError(f"model '{model}' takes no audio input; omit 'input'")
        session = Session(
            uuid.uuid4().hex[:12],
            model,
            generator.spec,
            validated,
            input_rate_hz=input_rate_hz,
            config=self.config.session,
            wake=self.wake,
        )
        session.access = access
        return session

    async def check_admission(self, model: str, *, probe: bool = True) -> None:
        """Raise :class:`CapacityError` (with the limit in its message) if a ``model`` session would be refused now.

        Admits nothing: what :meth:`open_session` would decide at this instant (a router asks before placing),
        including its re-probe of stale step costs unless ``probe`` is False (a cheap, periodic look).
        """
        if model not in self.generators:
            raise ProtocolError(
                f"model '{model}' is not served here; loaded models: {sorted(self.generators)}", "unknown_model"
            )
        self._refuse_if_closed()
        try:
            self.scheduler.reserve(model)
        except CapacityError:
            if not probe or not await self._probe_stale_costs(model):
                raise
            self.scheduler.reserve(model)
        self.scheduler.unreserve(model)

    def _refuse_if_closed(self) -> None:
        if self._stopping:
            raise CapacityError("server is shutting down", "shutdown")
        if self._draining:
            raise CapacityError(
                "server is draining: it finishes its running sessions and takes no new ones", "draining"
            )

    async def open_session(self, session: Session) -> None:
        """Admit, prepare and open a session, then start its clock; raises :class:`CapacityError` when full.

        Admission comes first, so a refused session costs no preparation. Then ``prepare_session`` runs on a
        preparation thread (the heavy part: uploads), ``open_session`` on the worker (the cheap part: slots),
        and ``session.params`` becomes what the model reports (``describe_session``), which `ready` echoes.
        """
        try:
            self._refuse_if_closed()
            if session.access is not None:
                self.clients.hold(session.id, session.access)
            try:
                self.scheduler.reserve(session.model)
            except CapacityError:
                # A refusal that rests on old step-cost estimates is checked once against a fresh probe.
                if not await self._probe_stale_costs(session.model):
                    raise
                self.scheduler.reserve(session.model)
        except BaseException as e:
            self.clients.release(session.id)
            if isinstance(e, CapacityError):
                self.metrics.sessions_refused.labels(session.model, e.reason).inc()
            raise
        generator = self.generators[session.model]
        try:
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self._prep, generator.prepare_session, session.params)
            session.params = await loop.run_in_executor(
                self._worker, self.runner.open, session.id, session.model, prepared
            )
        except BaseException as e:
            self.clients.release(session.id)
            self.scheduler.unreserve(session.model)
            if isinstance(e, CausalcastError):
                raise
            if isinstance(e, Exception):
                raise ModelError(f"could not open a '{session.model}' session: {e}") from e
            raise
        self.scheduler.add(session)
        session.start()
        self.metrics.sessions_started.labels(session.model).inc()
        self.metrics.sessions_active.labels(session.model).inc()

    async def _probe_stale_costs(self, model: str) -> bool:
        """Re-measure the old step-cost estimates a start of ``model`` is judged on; True if any was probed.

        A probe steps dummy sessions at that batch size on the worker, between turns (so it delays live
        sessions by about one step of that size); each size is probed at most once per probe interval.
        """
        now = time.monotonic()
        due = [
            (m, size)
            for m, sizes in self.scheduler.stale_costs(model).items()
            for size in sizes
            if now - self._probed_at.get((m, size), -math.inf) >= self.config.limits.probe_interval_s
            # dummy sessions take state slots beside the live ones
            and size + self.scheduler.count(m) <= self.generators[m].max_batch_size
        ]
        if not due:
            return False
        loop = asyncio.get_running_loop()
        for m, size in due:
            self._probed_at[(m, size)] = now
            try:
                seconds = await loop.run_in_executor(self._worker, self.runner.warmup, m, [size], 1)
            except Exception:  # a probe that fails leaves the estimate as it was
                log.exception("probing %s at batch size %d failed", m, size)
                continue
            self.scheduler.costs[m].observe_probe(size, seconds[size])
            self.metrics.cost_probes.labels(m).inc()
            log.info("probed %s at batch size %d: %.2f ms per step", m, size, seconds[size] * 1000)
        return True

    async def close_session(self, session: Session, reason: str) -> None:
        """Stop scheduling a session and free its model state. Safe to call twice."""
        session.close(reason)
        self.clients.release(session.id)
        if self.scheduler.remove(session.id) is None:
            return
        self.metrics.sessions_active.labels(session.model).dec()
        self.preparer.forget(session.id)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self.runner.close, session.id)

    def _report_error(self, session: Session, error: CausalcastError) -> None:
        self.metrics.errors.labels(error.code).inc()
        session.outbox.put_control(error.to_message())
        if error.fatal:
            session.close(str(error))
            self.clients.release(session.id)
            self.scheduler.remove(session.id)
            self.metrics.sessions_active.labels(session.model).dec()
            self.preparer.forget(session.id)
            self._worker.submit(self.runner.close, session.id)

    # -- the loop ------------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # before scheduling: a wake during the turn is never lost
            plan = self.scheduler.schedule(time.monotonic())
            self.preparer.divert(plan, self.scheduler.sessions)
            if plan.empty:
                timeout = self.scheduler.next_wakeup(time.monotonic())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            try:
                result = await loop.run_in_executor(self._worker, self.runner.execute, plan)
            except Exception:
                log.exception("engine turn failed: %s", _describe(plan))
                for batch in plan.batches:
                    for item in batch.sessions:
                        if (session := self.scheduler.sessions.get(item.session_id)) is not None:
                            self._report_error(session, ModelError("the engine failed while stepping"))
                continue
            self._record(plan, result)

    def _record(self, plan: SchedulerOutput, result: Any) -> None:
        report = self.scheduler.update_from_output(plan, result, time.monotonic(), self._report_error)
        for timing in result.timings:
            self.metrics.step_seconds.labels(timing.model).observe(timing.seconds)
            self.metrics.batch_size.labels(timing.model).observe(timing.batch_size)
        for model, n in report.chunks.items():
            self.metrics.chunks_produced.labels(model).inc(n)
        for model, n in report.late.items():
            if n:
                self.metrics.late_chunks.labels(model).inc(n)

    # -- introspection -------------------------------------------------------------------------------
    def sessions_per_model(self) -> dict[str, int]:
        """Running sessions of each loaded model (0 for a model with none)."""
        counts = dict.fromkeys(self.generators, 0)
        for session in self.scheduler.sessions.values():
            counts[session.model] += 1
        return counts

    def status(self) -> dict[str, Any]:
        """Load and capacity, for /healthz."""
        return {
            "device": self.config.device,
            "sessions": len(self.scheduler.sessions),
            "sessions_per_model": self.sessions_per_model(),
            "draining": self._draining,
            "utilization": round(self.scheduler.utilization(), 4),
            "max_utilization": self.scheduler.limits.max_utilization,
            "max_sessions": self.scheduler.limits.max_sessions,
            "event_loop": self.loop_load.status(),
        }


def _background_thread() -> None:
    """Lower this thread's CPU priority: preparation work yields to the loop and the steps when they compete."""
    with contextlib.suppress(AttributeError, OSError):  # per-thread nice values are Linux's; elsewhere a no-op
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREP_NICENESS)


def _describe(plan: SchedulerOutput) -> str:
    return ", ".join(f"{b.model}×{len(b.sessions)}→{b.padded_batch_size}" for b in plan.batches) or "events only"
