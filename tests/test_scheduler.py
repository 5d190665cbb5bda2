"""Scheduler and cost model on the CPU with no model: buckets, batching, admission messages."""

import time

import numpy as np
import pytest

from models.base import AudioFormat, Pacing, StepOutput, StreamSpec
from models.errors import CapacityError
from streaming.engine.cost import BatchBuckets, StepCostModel
from streaming.engine.loop_load import LoopLoad
from streaming.engine.scheduler import AdmissionLimits, ModelInfo, RunnerOutput, Scheduler
from streaming.session import Session, SessionConfig

SPEC = StreamSpec(chunk_ms=20, pacing=Pacing.INPUT, input_audio=AudioFormat(16000), output_audio=AudioFormat(16000))
PCM_CHUNK = np.zeros(320, np.float32)  # one 20 ms chunk of client audio at 16 kHz


def make_session(i, model="m"):
    return Session(f"s{i}", model, SPEC, {}, input_rate_hz=16000, config=SessionConfig(), wake=lambda s: None)


def test_buckets_are_powers_of_two_up_to_the_max():
    b = BatchBuckets(48)
    assert b.sizes == (1, 2, 4, 8, 16, 32, 48)
    assert [b.bucket(n) for n in (1, 3, 9, 33, 48)] == [1, 4, 16, 48, 48]
    assert b.split(100) == [48, 48, 4]
    with pytest.raises(ValueError):
        b.bucket(49)


def test_cost_model_interpolates_and_extrapolates_conservatively():
    cost = StepCostModel(BatchBuckets(64))
    cost.observe(1, 1, 0.001)
    cost.observe(16, 16, 0.004)
    assert cost.step_seconds(1) == pytest.approx(0.001)
    assert cost.step_seconds(6) == pytest.approx(0.001 + 0.003 * 5 / 15)
    assert cost.step_seconds(64) == pytest.approx(0.004 + 0.0002 * 48)  # average marginal cost continues
    padded = StepCostModel(BatchBuckets(64), pads_to_bucket=True)
    padded.observe(3, 4, 0.002)
    assert padded.step_seconds(3) == padded.step_seconds(4) == pytest.approx(0.002)


def test_due_sessions_are_batched_by_deadline_and_split_at_max_batch():
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=2)}, AdmissionLimits())
    sessions = [make_session(i) for i in range(3)]
    for s in sessions:
        sched.reserve("m")
        sched.add(s)
        s.start(now=0.0)
    for i, s in enumerate(reversed(sessions)):  # s2 completes its chunk first
        s.push_audio(PCM_CHUNK, pts=0, now=float(i))
    plan = sched.schedule(now=10.0)
    assert [[x.session_id for x in b.sessions] for b in plan.batches] == [["s2", "s1"], ["s0"]]
    assert [b.padded_batch_size for b in plan.batches] == [2, 1]
    assert sched.schedule(now=10.0).empty  # input was consumed
    outputs = {s.id: StepOutput(audio=None) for s in sessions}
    report = sched.update_from_output(plan, RunnerOutput(outputs=outputs), now=10.5, fail=lambda *a: None)
    assert report.chunks["m"] == 3 and report.late["m"] == 3  # ~10 s after their input: late
    assert sessions[0].stats.late_chunks == 1


def test_admission_refuses_when_a_chunk_could_wait_past_its_allowance():
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=64)}, AdmissionLimits(max_utilization=1.0))
    sched.costs["m"].observe(1, 1, 0.004)  # 4 ms per session: the 20 ms allowance fits two (2 x 8 ms)
    sched.reserve("m")
    sched.reserve("m")
    with pytest.raises(CapacityError, match="could wait 24.0 ms"):
        sched.reserve("m")


def test_admission_refuses_past_the_utilization_limit():
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=64)}, AdmissionLimits(max_utilization=0.5))
    sched.costs["m"].observe(1, 1, 0.0009)  # big batches are cheap per session: throughput binds
    sched.costs["m"].observe(64, 64, 0.00081 * 64)
    for _ in range(12):  # ~9.8 ms of 20: under 50 %
        sched.reserve("m")
    with pytest.raises(CapacityError, match="53% busy"):
        sched.reserve("m")


def test_the_first_session_is_admitted_even_when_its_estimate_is_over_budget():
    # Nothing runs that it could make late; a transiently inflated estimate must not lock everyone out.
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=8)}, AdmissionLimits())
    sched.costs["m"].observe(1, 1, 0.030)  # 30 ms per 20 ms chunk
    sched.reserve("m")
    with pytest.raises(CapacityError, match="would need"):
        sched.reserve("m")  # the second would make the first late


def test_loop_load_projection_refuses_with_its_reason():
    load = LoopLoad()
    for n in (1, 2, 3):
        load.observe(n, 0.05 + 0.1 * n)  # 10 % of the loop per session, 5 % base
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=8)}, AdmissionLimits(max_loop_busy=0.5), loop_load=load)
    for _ in range(4):  # 0.05 + 4 x 0.1 = 45 %
        sched.reserve("m")
    with pytest.raises(CapacityError, match="event loop 55% of a core"):
        sched.reserve("m")


def test_session_cap_is_enforced():
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=8)}, AdmissionLimits(max_sessions=2))
    sched.reserve("m")
    sched.reserve("m")
    with pytest.raises(CapacityError, match="maximum"):
        sched.reserve("m")


def test_admission_refuses_while_recent_chunks_are_late():
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=8)}, AdmissionLimits())
    sessions = [make_session(i) for i in range(60)]
    for s in sessions:
        sched.reserve("m")
        sched.add(s)
        s.start(now=0.0)
        s.push_audio(PCM_CHUNK, pts=0, now=0.0)
    now = time.monotonic()
    plan = sched.schedule(now)
    outputs = {s.id: StepOutput(audio=None) for s in sessions}
    sched.update_from_output(plan, RunnerOutput(outputs=outputs), now=now, fail=lambda *a: None)
    assert sched.recent_lateness() == (60, 60)  # input stamped at t=0 finished "now": all late
    with pytest.raises(CapacityError, match="running behind"):
        sched.reserve("m")
    assert sched.recent_lateness(now=now + 5) == (0, 0)  # the window forgets


def test_clock_sessions_are_woken_by_a_heap_without_duplicates():
    spec = StreamSpec(chunk_ms=40, pacing=Pacing.CLOCK, output_audio=AudioFormat(16000))
    sched = Scheduler({"c": ModelInfo(spec, max_batch_size=8)}, AdmissionLimits())
    s = Session("c0", "c", spec, {}, input_rate_hz=None, config=SessionConfig(), wake=sched.mark)
    sched.reserve("c")
    sched.add(s)
    s.start(now=100.0)
    for k in range(5):
        now = 100.0 + 0.04 * k
        plan = sched.schedule(now)
        assert [x.session_id for b in plan.batches for x in b.sessions] == ["c0"]
        assert sched.schedule(now).empty  # stepped once per due time, never twice
        outputs = {"c0": StepOutput(audio=np.zeros(640, np.float32))}
        sched.update_from_output(plan, RunnerOutput(outputs=outputs), now=now + 0.001, fail=lambda *a: None)
        assert sched.next_wakeup(now) == pytest.approx(0.04)
    assert len(sched._clock) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_inflated_estimate_relaxes_to_its_baseline_when_nothing_measures_it():
    clock = FakeClock()
    cost = StepCostModel(BatchBuckets(64), fresh_s=5.0, half_life_s=10.0, clock=clock)
    cost.observe(1, 1, 0.001)  # warm-up: the baseline
    cost.observe(2, 2, 0.0015)
    for _ in range(200):  # a burst starves the worker: size 2 measures 120 ms for a while
        cost.observe(2, 2, 0.120)
    assert cost.step_seconds(2) > 0.1
    assert cost.stale_sizes(2) == []  # just measured: fresh, nothing to probe
    clock.now += 5.0 + 10.0  # fresh window, then one half-life
    assert cost.step_seconds(2) == pytest.approx(0.0015 + (0.120 - 0.0015) / 2, rel=0.01)
    assert cost.stale_sizes(2) == [2]
    clock.now += 200.0
    assert cost.step_seconds(2) == pytest.approx(0.0015, rel=0.01)
    cost.observe(2, 2, 0.002)  # a live step after the pause averages from the aged value, not the burst
    assert cost.step_seconds(2) == pytest.approx(0.0015 + 0.05 * 0.0005, rel=0.01)


def test_a_probe_replaces_a_stale_estimate_and_unmeasured_sizes_name_their_neighbours():
    clock = FakeClock()
    cost = StepCostModel(BatchBuckets(64), fresh_s=1.0, clock=clock)
    cost.observe(1, 1, 0.001)
    cost.observe(8, 8, 0.004)
    clock.now += 2.0
    assert cost.stale_sizes(4) == [1, 8]  # 4 is interpolated from 1 and 8
    assert cost.stale_sizes(100) == [1, 8]  # 64 + 36, both beyond: extrapolated from 1 and 8
    cost.observe_probe(8, 0.003)
    assert cost.step_seconds(8) == pytest.approx(0.003)
    assert cost.stale_sizes(8) == []


def test_a_transient_does_not_refuse_a_second_session_or_another_model_for_good():
    clock = FakeClock()
    other = StreamSpec(chunk_ms=40, pacing=Pacing.CLOCK, output_audio=AudioFormat(16000))
    limits = AdmissionLimits(cost_fresh_s=5.0, cost_half_life_s=10.0)
    sched = Scheduler({"m": ModelInfo(SPEC, 64), "o": ModelInfo(other, 64)}, limits, clock=clock)
    for size in (1, 2, 4):
        sched.costs["m"].observe(size, size, 0.0005 * size)
        sched.costs["o"].observe(size, size, 0.001 * size)
    sched.reserve("m")
    sched.add(make_session(0))
    for _ in range(100):  # the burst: both sizes of 'm' measured slow
        sched.costs["m"].observe(1, 1, 0.060)
        sched.costs["m"].observe(2, 2, 0.120)
    with pytest.raises(CapacityError) as refused:
        sched.reserve("m")
    assert refused.value.reason == "utilization"
    with pytest.raises(CapacityError):
        sched.reserve("o")  # the running 'm' session's inflated cost refuses other models too
    assert sched.stale_costs("o") == {}  # ... while the estimates are fresh there is nothing to probe
    clock.now += 30.0  # nobody stepped size 2 (refused) and the 'm' session is idle (no input)
    assert sched.stale_costs("o") == {"m": [1], "o": [1]}
    clock.now += 60.0
    sched.reserve("m")
    sched.reserve("o")


def test_a_cold_loop_line_prices_a_burst_at_the_prior():
    """No steady sample yet: each session is priced at the prior, so a burst of starts is capped."""
    load = LoopLoad(prior_per_session=0.01)
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=8)}, AdmissionLimits(max_loop_busy=0.705), loop_load=load)
    sched.costs["m"].observe(8, 8, 1e-6)  # the device is no limit here
    for _ in range(70):  # 70 x 1 % = 70 %
        sched.reserve("m")
    with pytest.raises(CapacityError, match="beyond what it has measured") as refused:
        sched.reserve("m")
    assert refused.value.reason == "event_loop"
