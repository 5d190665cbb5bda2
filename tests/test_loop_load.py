"""Event-loop load: the sampler sees CPU work on the loop, prices sessions by the slope, and admission uses it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from models.base import AudioFormat, Pacing, StreamSpec
from models.errors import CapacityError
from streaming.client import Client, ServerError
from streaming.engine.loop_load import LoopLoad, read_schedstat
from streaming.engine.scheduler import AdmissionLimits, ModelInfo, Scheduler
from streaming.server import ENGINE_KEY

from streaming_helpers import roundtrip, tone

SPEC = StreamSpec(chunk_ms=20, pacing=Pacing.INPUT, input_audio=AudioFormat(16000), output_audio=AudioFormat(16000))


async def spin(seconds: float, duty: float) -> None:
    """Keep the loop thread on CPU for ``duty`` of each 10 ms for ``seconds`` of wall time."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cpu_end = time.thread_time() + 0.01 * duty
        while time.thread_time() < cpu_end:
            pass
        await asyncio.sleep(0.01 * (1 - duty))


async def test_busy_share_follows_the_loop_threads_cpu_work() -> None:
    load = LoopLoad(interval_s=0.05, window_s=0.5)
    sampler = asyncio.create_task(load.run(lambda: (1, 0)))
    try:
        await asyncio.sleep(0.6)
        idle = load.busy
        cpu, wall = time.thread_time(), time.monotonic()
        await spin(0.6, duty=0.8)
        # What the loop thread really got: under 0.8 when other processes hold the cores (a busy CI machine).
        achieved = (time.thread_time() - cpu) / (time.monotonic() - wall)
        busy = load.busy
    finally:
        sampler.cancel()
    print(f"loop busy idle {idle:.2f}, spinning 80 %: {busy:.2f} (the thread got {achieved:.2f})")
    assert idle < 0.15
    assert achieved > 0.1, "the machine gave the loop thread almost no CPU: nothing to measure"
    assert 0.6 * achieved < busy < achieved + 0.15  # CPU seconds per wall second over the last 0.5 s
    assert load.lag_s >= 0.0


def test_per_session_cost_is_the_slope_not_the_base_load() -> None:
    load = LoopLoad()
    assert load.per_session() == 0.0  # nothing known: admission relies on the other checks
    for n in (1, 2, 4, 8, 16):
        load.observe(n, 0.05 + 0.01 * n)  # 5 % base load (timers, scrapes) + 1 % per session
    assert load.per_session() == pytest.approx(0.01)
    assert load.projected_demand(40) == pytest.approx(0.45)
    single = LoopLoad()
    single.observe(4, 0.2)
    single.observe(4, 0.2)
    assert single.per_session() == pytest.approx(0.05)  # one count only: everything charged (conservative)



def test_a_flood_during_a_session_inflates_the_loop_line_only_for_a_while() -> None:
    """A ping flood while one session ran read as 90 % busy per session; it must not refuse the next for good."""
    now = [0.0]
    load = LoopLoad(fresh_s=5.0, half_life_s=10.0, clock=lambda: now[0])
    for _ in range(20):  # one pitch session, calm: 2 % of the loop
        load.observe(1, 0.02)
        now[0] += 0.25
    for _ in range(40):  # the flood beside it, then the session (and the flood) ends: no more samples
        load.observe(1, 0.9)
        now[0] += 0.25
    inflated = load.per_session()
    assert inflated > 0.5 and load.projected_demand(2) > 0.75  # just measured: it stands, a second is refused
    now[0] += 20.0
    assert 0.02 < load.per_session() < 0.5 * inflated  # relaxing towards the calm share
    now[0] += 60.0
    assert load.per_session() < 0.03  # recovered: a second session is priced at what one calm one cost
    assert load.projected_demand(2) < 0.75


def test_fresh_samples_are_not_aged_and_calm_ones_stay() -> None:
    now = [0.0]
    load = LoopLoad(clock=lambda: now[0])
    for n in (1, 2, 3, 4):
        load.observe(n, 0.01 + 0.05 * n)
    now[0] += 1000.0  # old, but already the calmest seen at each count: nothing to relax
    assert load.per_session() == pytest.approx(0.05)


async def test_a_session_the_event_loop_cannot_serve_is_refused_with_the_reason(start_server) -> None:
    server = await start_server(("pitch",))
    engine = server.app[ENGINE_KEY]
    first, second = Client(server.ws_url), Client(server.ws_url)
    await first.connect()
    await second.connect()
    try:
        await first.start("pitch", input_sample_rate_hz=16_000, audio="pcm16")
        audio = tone(300, 1.5)
        await roundtrip(first, audio, 16_000, 320, len(audio))
        async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/healthz") as r:
            loop_status = (await r.json())["engine"]["event_loop"]
        print("event loop with one session and its client:", loop_status)
        assert loop_status["busy"] > 0 and loop_status["busy_per_session"] > 0
        assert loop_status["demand"] >= loop_status["busy"]
        # An operator's limit below what two sessions cost (server and client share this loop here).
        limit = 1.5 * loop_status["busy_per_session"]
        engine.scheduler.limits = dataclasses.replace(engine.scheduler.limits, max_loop_busy=limit)
        with pytest.raises(ServerError) as refused:
            await second.start("pitch", input_sample_rate_hz=16_000, audio="pcm16")
        assert refused.value.code == "capacity"
        assert "event loop" in refused.value.message["message"], refused.value.message
        assert first.ready is not None  # the running session is untouched
        await roundtrip(first, audio[:8000], 16_000, 320, 8000)
    finally:
        await first.close()
        await second.close()


def synthetic_schedstat(cpu_share: float, wait_share: float):
    """Cumulative (CPU s, wait s) of a thread that is on CPU and waiting for these shares of wall time."""
    t0 = time.monotonic()
    return lambda: ((time.monotonic() - t0) * cpu_share, (time.monotonic() - t0) * wait_share)


async def test_demand_adds_run_queue_wait_and_refuses_what_cpu_alone_would_admit() -> None:
    """The measured case: 32 sessions 25 % on CPU + 13 % waiting; the loop was late at 64 (CPU ~41 %)."""
    load = LoopLoad(interval_s=0.02, times=synthetic_schedstat(0.25, 0.13))
    sampler = asyncio.create_task(load.run(lambda: (32, 0)))
    try:
        await asyncio.sleep(0.3)
    finally:
        sampler.cancel()
    assert load.busy == pytest.approx(0.25, abs=0.02) and load.wait == pytest.approx(0.13, abs=0.02)
    assert load.per_session() == pytest.approx(0.25 / 32, rel=0.1)  # the CPU line: one count, all per session
    assert load.top_rate() == pytest.approx(0.38 / 32, rel=0.1)  # what the 32 demanded, per session
    assert load.projected_demand(64) == pytest.approx(0.76, rel=0.1)
    assert load.per_session() * 64 < 0.7  # the CPU-only line would have admitted the 64th
    sched = Scheduler({"m": ModelInfo(SPEC, max_batch_size=64)}, AdmissionLimits(max_loop_busy=0.7), loop_load=load)
    sched.costs["m"].observe(64, 64, 1e-6)  # the device is no limit here
    for _ in range(58):  # 58 x 1.19 % = 69 %
        sched.reserve("m")
    with pytest.raises(CapacityError, match=r"on CPU or waiting for one; limit 70%") as refused:
        sched.reserve("m")
    assert refused.value.reason == "event_loop"


def test_a_few_sessions_are_priced_by_cpu_so_a_flood_beside_one_does_not_refuse_the_next() -> None:
    """A flood of offers beside one session on the loaded VM: 0.23 on CPU, 0.37 with the run-queue wait."""
    load = LoopLoad()
    for _ in range(8):
        load.observe(1, 0.23, 0.37)
    assert load.top_rate() == 0.0  # one session cannot say what a session costs the loop
    assert load.projected_demand(2) == pytest.approx(0.46)  # admitted under 0.7 (2 x 0.37 would not be)


def test_schedstat_is_read_from_its_first_two_fields(tmp_path: Path) -> None:
    sample = tmp_path / "schedstat"
    sample.write_text("410000000 350000000 12345\n")
    assert read_schedstat(sample) == (0.41, 0.35)
    assert read_schedstat(tmp_path / "missing") is None  # no scheduler statistics: CPU time alone is used
    load = LoopLoad()
    assert load.source == ("schedstat" if read_schedstat() is not None else "thread_time")


def test_a_line_is_trusted_to_twice_its_largest_count_then_priced_at_least_at_the_prior() -> None:
    load = LoopLoad(prior_per_session=0.01)
    assert load.projected_demand(50) == pytest.approx(0.5)  # cold: the prior alone
    for n in (1, 2, 4):
        load.observe(n, 0.001 * n)  # a cheap line, measured on a few sessions only
    assert load.trusted_sessions() == 8
    assert load.projected_demand(8) == pytest.approx(0.008)
    assert load.projected_demand(108) == pytest.approx(0.008 + 100 * 0.01)
    for n in (32, 64):
        load.observe(n, 0.001 * n)  # measured that far: the line holds
    assert load.projected_demand(108) == pytest.approx(0.108)


def test_demand_that_grows_faster_than_linearly_is_priced_at_the_largest_counts_rate() -> None:
    """Pitch sessions on the loaded VM cost 0.64 of a core at 32 (streaming), 0.77 at 40: chunks went late at 40."""
    load = LoopLoad()
    for n, demand in ((1, 0.077), (2, 0.125), (4, 0.148), (8, 0.197), (16, 0.362)):
        for _ in range(16):
            load.observe(n, demand)
    for demand in [0.05] * 3 + [0.635] * 16 + [0.3] * 2:  # 32 joined idle, streamed, then drained
        load.observe(32, demand)
    base, slope = load.cost_line()
    assert base + 40 * slope < 0.7  # the line alone would admit the 40th
    assert load.top_rate() == pytest.approx((0.635 - base) / 32)
    assert load.projected_demand(40) > 0.75  # refused under a 0.7 limit
    assert load.projected_demand(34) < 0.7
    few = LoopLoad()
    for n, demand in ((1, 0.1), (2, 0.11), (4, 0.13)):
        few.observe(n, demand)
    assert few.top_rate() == 0.0  # a few sessions: the base load dominates their ratio; the line prices them
    assert few.projected_demand(8) == pytest.approx(few.cost_line()[0] + 8 * few.cost_line()[1])
    linear = LoopLoad()
    for n in (1, 2, 4, 8, 16):
        linear.observe(n, 0.05 + 0.01 * n)
    assert linear.top_rate() == pytest.approx(0.01)  # a straight line: its top point is on it


@pytest.mark.skipif(read_schedstat() is None, reason="no /proc/thread-self/schedstat (not Linux)")
async def test_the_loop_threads_run_queue_wait_is_measured() -> None:
    """A process spinning on the loop thread's only CPU makes the loop wait: demand sees it, CPU time cannot."""
    cpus = os.sched_getaffinity(0)
    cpu = min(cpus)
    hog = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    )
    load = LoopLoad(interval_s=0.05, window_s=0.5)
    os.sched_setaffinity(0, {cpu})  # this thread only: the loop shares one CPU with the hog
    try:
        await asyncio.sleep(0.3)  # the hog is running
        sampler = asyncio.create_task(load.run(lambda: (1, 0)))
        try:
            await spin(0.6, duty=0.8)
            busy, wait = load.busy, load.wait
        finally:
            sampler.cancel()
    finally:
        os.sched_setaffinity(0, cpus)
        hog.kill()
        await hog.wait()
    print(f"loop thread beside a hog on CPU {cpu}: {busy:.2f} on CPU, {wait:.2f} waiting")
    assert load.source == "schedstat"
    assert wait > 0.1  # runnable ~80 % of the time, on CPU for about half of that
    assert load.demand == pytest.approx(busy + wait)


async def test_a_cold_burst_of_starts_is_capped_by_the_prior(start_server) -> None:
    """Nothing measured yet: a burst is priced at the prior, refused with the reason, and /metrics counts it."""
    server = await start_server(("pitch",))
    engine = server.app[ENGINE_KEY]
    assert engine.loop_load.cost_line() == (0.0, 0.0)  # cold
    engine.loop_load.prior_per_session = 0.2  # a deliberately expensive prior: the 4th start would need 80 %
    engine.scheduler.limits = dataclasses.replace(engine.scheduler.limits, max_loop_busy=0.7)
    clients = [Client(server.ws_url) for _ in range(8)]
    try:
        for client in clients:
            await client.connect()
        outcomes = await asyncio.gather(
            *(c.start("pitch", input_sample_rate_hz=16_000, audio="pcm16") for c in clients), return_exceptions=True
        )
        admitted = [c for c, o in zip(clients, outcomes, strict=True) if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        print("cold burst of 8:", len(admitted), "admitted;", refused[:1])
        # 3 when no steady interval passed during the burst; a steady sample at 1-2 sessions lets in 1-2 more.
        assert 3 <= len(admitted) <= 5
        for error in refused:
            assert isinstance(error, ServerError) and error.code == "capacity", error
            message = error.message["message"]
            assert "event loop" in message and "beyond what it has measured" in message, message
        async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
            metrics = await r.text()
        assert f'causalcast_sessions_refused_total{{model="pitch",reason="event_loop"}} {len(refused)}.0' in metrics
        audio = tone(300, 0.5)
        await roundtrip(admitted[0], audio, 16_000, 320, len(audio))  # the admitted ones stream
    finally:
        for client in clients:
            await client.close()
