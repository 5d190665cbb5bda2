"""The runner: owns every session's model state on one device and executes scheduled batches.

Every method runs on the engine's single worker thread, so model state is only ever touched from one
thread. A failing control event costs only its session an error message; a failing batch step is retried
session by session so one bad session cannot take its batch-mates down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from models.base import ControlEvent, Generator, StepInput, StepOutput, apply_event, open_direct
from models.errors import CausalcastError, ModelError
from streaming.engine.scheduler import RunnerOutput, ScheduledBatch, SchedulerOutput, StepTiming

log = logging.getLogger(__name__)


class Runner:
    """Per-device owner of model states, keyed by session id."""

    def __init__(self, generators: Mapping[str, Generator]) -> None:
        self.generators = dict(generators)
        self._states: dict[str, tuple[str, Any]] = {}  # session id -> (model, state)

    @property
    def num_states(self) -> int:
        """Sessions whose state is held."""
        return len(self._states)

    def open(self, session_id: str, model: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Create a session's state (params already validated and prepared); returns what the client is told."""
        generator = self.generators[model]
        state = generator.open_session(params)
        self._states[session_id] = (model, state)
        return generator.describe_session(state, params)

    def close(self, session_id: str) -> None:
        """Free a session's state; unknown ids are ignored (double close is harmless)."""
        entry = self._states.pop(session_id, None)
        if entry is None:
            return
        model, state = entry
        try:
            self.generators[model].close_session(state)
        except Exception:  # close must not take the engine down; the state is gone either way
            log.exception("closing session %s of model %s failed", session_id, model)

    def execute(self, plan: SchedulerOutput) -> RunnerOutput:
        """Apply control events, then step every batch of the plan."""
        result = RunnerOutput()
        for session_id, events in plan.events.items():
            self._apply_events(session_id, events, result)
        for batch in plan.batches:
            self._step_batch(batch, result)
        return result

    def _apply_events(self, session_id: str, events: list[ControlEvent], result: RunnerOutput) -> None:
        entry = self._states.get(session_id)
        if entry is None:
            return
        model, state = entry
        notices = result.notices.setdefault(session_id, [])
        for event in events:
            try:
                notices.extend(self.generators[model].handle_event(state, event))
            except CausalcastError as e:
                notices.append(e.to_message())
            except Exception as e:
                log.exception("event %r of session %s (model %s) failed", event.type, session_id, model)
                notices.append(ModelError(f"'{event.type}' failed: {e}").to_message() | {"fatal": False})

    def _step_batch(self, batch: ScheduledBatch, result: RunnerOutput) -> None:
        items = [s for s in batch.sessions if s.session_id in self._states]
        if not items:
            return
        generator = self.generators[batch.model]
        states = [self._states[s.session_id][1] for s in items]
        inputs = [s.input for s in items]
        started = time.perf_counter()
        try:
            outputs = generator.step(states, inputs, batch.padded_batch_size)
            _check_outputs(outputs, len(items))
        except Exception:
            ids = [s.session_id for s in items]
            log.exception("step of model %s failed for batch %s; retrying one by one", batch.model, ids)
            outputs = self._step_one_by_one(generator, items, states, inputs, result)
        else:
            result.timings.append(
                StepTiming(batch.model, len(items), batch.padded_batch_size, time.perf_counter() - started)
            )
        for item, output in zip(items, outputs, strict=True):
            if output is not None:
                result.outputs[item.session_id] = output

    def _step_one_by_one(
        self, generator: Generator, items: list, states: list, inputs: list[StepInput], result: RunnerOutput
    ) -> list[StepOutput | None]:
        outputs: list[StepOutput | None] = []
        for item, state, step_input in zip(items, states, inputs, strict=True):
            try:
                (output,) = generator.step([state], [step_input], 1)
                _check_outputs([output], 1)
                outputs.append(output)
            except Exception as e:
                log.exception("session %s failed in model %s", item.session_id, generator.name)
                result.errors[item.session_id] = (
                    e
                    if isinstance(e, CausalcastError)
                    else ModelError(f"model '{generator.name}' failed on this session: {type(e).__name__}: {e}")
                )
                outputs.append(None)
        return outputs

    def warmup(self, model: str, batch_sizes: list[int], num_steps: int = 3) -> dict[int, float]:
        """Step ``model`` with dummy sessions at each batch size; returns the median seconds per step."""
        generator = self.generators[model]
        spec = generator.spec
        seconds: dict[int, float] = {}
        for size in batch_sizes:
            states = [open_direct(generator, {}) for _ in range(size)]
            try:
                for state in states:
                    for event in generator.warmup_events():
                        apply_event(generator, state, event)
                n = spec.input_chunk_samples
                inputs = [StepInput(np.zeros(n, np.float32), n) if n else StepInput() for _ in range(size)]
                times = []
                for _ in range(num_steps + 1):  # the first step pays one-off costs; not counted
                    started = time.perf_counter()
                    generator.step(states, inputs, size)
                    times.append(time.perf_counter() - started)
                seconds[size] = float(np.median(times[1:]))
            finally:
                for state in states:
                    generator.close_session(state)
        return seconds


def _check_outputs(outputs: list[StepOutput], expected: int) -> None:
    if len(outputs) != expected:
        raise ModelError(f"step returned {len(outputs)} outputs for {expected} sessions")
