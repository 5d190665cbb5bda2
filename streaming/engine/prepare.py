"""Control events that need heavy work are prepared off the event loop and off the step thread, in order.

A generator lists the event types whose payload needs heavy, stateless work before it can be applied
(``Generator.prepared_events``: embed an uploaded reference, decode pushed audio). Each turn the engine
passes the events it scheduled through :meth:`EventPreparer.divert`: from a session's first such event on,
that session's events leave the turn and queue here (later ones join the queue while it exists). A task per
session prepares them one by one on the engine's preparation thread(s), then gives the run back to the
session (``Session.return_events``), ahead of anything that arrived meanwhile. So ``handle_event`` sees each
session's events in the order they were sent, and the step thread never waits for a preparation: other
sessions keep their chunks on time while one session's 300 ms reference is embedded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from models.base import ControlEvent, Generator
from models.errors import CausalcastError, ModelError, ProtocolError
from streaming.engine.scheduler import SchedulerOutput
from streaming.session import Session

log = logging.getLogger(__name__)


class EventPreparer:
    """Per-session queues of events waiting for (or behind) a preparation."""

    def __init__(self, generators: Mapping[str, Generator], executor: Executor, max_queued: int) -> None:
        self.generators = generators
        self.executor = executor
        self.max_queued = max_queued  # per session; more is refused as a flood
        self._queues: dict[str, deque[ControlEvent]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._scratch: dict[str, dict[str, Any]] = {}  # each session's memory for prepare_event (upload pieces)

    @property
    def num_preparing(self) -> int:
        """Sessions with events in preparation."""
        return len(self._queues)

    def divert(self, plan: SchedulerOutput, sessions: Mapping[str, Session]) -> None:
        """Take events that need preparation (and every later event of their session) out of ``plan``."""
        for session_id in list(plan.events):
            session = sessions.get(session_id)
            if session is None:
                continue
            events = plan.events[session_id]
            queue = self._queues.get(session_id)
            if queue is None:
                prepared = self.generators[session.model].prepared_events
                first = next((i for i, e in enumerate(events) if e.type in prepared and not e.is_prepared), None)
                if first is None:
                    continue
                queue = self._queues[session_id] = deque()
                scratch = self._scratch.setdefault(session_id, {})
                task = asyncio.create_task(self._prepare(session, queue, scratch), name=f"prep-{session_id}")
                self._tasks[session_id] = task
                events, rest = events[:first], events[first:]
            else:
                events, rest = [], events
            for event in rest:
                if len(queue) >= self.max_queued:
                    waiting = f"too many events waiting behind a '{queue[0].type}'; slow down"
                    session.notify(ProtocolError(waiting, "rate_limited").to_message())
                    continue
                queue.append(event)
            if events:
                plan.events[session_id] = events
            else:
                del plan.events[session_id]

    async def _prepare(self, session: Session, queue: deque[ControlEvent], scratch: dict[str, Any]) -> None:
        generator = self.generators[session.model]
        loop = asyncio.get_running_loop()
        ready: list[ControlEvent] = []
        try:
            while queue:
                event = queue.popleft()
                if event.type in generator.prepared_events and not event.is_prepared:
                    try:
                        event = await loop.run_in_executor(self.executor, generator.prepare_event, event, scratch)
                    except CausalcastError as e:
                        session.notify(e.to_message())
                        continue
                    except Exception as e:
                        log.exception("preparing event %r of session %s (model %s) failed",
                                      event.type, session.id, session.model)
                        session.notify(ModelError(f"'{event.type}' failed: {e}").to_message() | {"fatal": False})
                        continue
                    if event is None:  # consumed (a piece of an upload)
                        continue
                    event = dataclasses.replace(event, is_prepared=True)
                ready.append(event)
        finally:
            if self._queues.get(session.id) is queue:  # else forgotten already
                del self._queues[session.id], self._tasks[session.id]
        if ready and session.running:
            session.return_events(ready)

    def forget(self, session_id: str) -> None:
        """Drop a closed session's queue, its preparation in flight (its result is discarded) and its scratch."""
        self._scratch.pop(session_id, None)
        self._queues.pop(session_id, None)
        task = self._tasks.pop(session_id, None)
        if task is not None:
            task.cancel()  # its cleanup runs when the loop next resumes it
