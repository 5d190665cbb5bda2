"""causalcast on Ray Serve: a real local Ray cluster, two engine replicas behind the ingress, real clients.

The test starts Ray itself (127.0.0.1 only, no dashboard, a temp dir of its own, 2 CPUs), deploys the
application of streaming/ray_serve with two CPU engine replicas serving the diagnostic `pitch` and
`testcard` models, and talks to Serve's HTTP proxy with the ordinary WebSocket and WebRTC clients. It
skips, saying why, only when Ray cannot start here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from streaming.client import Client, MediaCollector, ServerError
from streaming.ray_serve.placement import ReplicaLoad, find_share, rank_for_session

from streaming_helpers import tone

pytestmark = pytest.mark.timeout(180)

RATE_HZ = 16_000
FRAME = 320  # 20 ms


# -- the placement policy on plain data (no Ray) -----------------------------------------------------
def _load(sessions: int, room: bool = True, draining: bool = False, shared: tuple[str, ...] = ()) -> ReplicaLoad:
    return ReplicaLoad(reported_at_s=1.0, draining=draining, models=("pitch", "testcard"),
                       sessions_per_model={"pitch": sessions}, room={"pitch": None if room else "full"},
                       shared=frozenset(shared))


def test_rank_for_session_prefers_room_then_fewest_sessions() -> None:
    loads = {"a": _load(3), "b": _load(1), "c": _load(0, room=False), "d": _load(0, draining=True), "e": None}
    assert rank_for_session(loads, "pitch") == ["b", "a", "e", "c", "d"]
    # Two sessions placed on b since its report make it the busier one.
    assert rank_for_session(loads, "pitch", placed_since_report={"b": 3})[:2] == ["a", "b"]
    # A replica that just refused goes last; a model no one serves still gets an answer (its refusal).
    assert rank_for_session(loads, "pitch", exclude=["b"])[-1] == "b"
    assert set(rank_for_session(loads, "vc")) == set(loads)
    assert find_share({"a": _load(0), "b": _load(0, shared=("s1",))}, "s1") == "b"
    assert find_share({"a": _load(0)}, "s1") is None


def test_sessions_policy_asks_for_replicas_by_sessions() -> None:
    pytest.importorskip("ray", reason="Ray is not installed (the 'ray' extra)")
    from ray.serve.config import AutoscalingContext

    from streaming.ray_serve.autoscale import SessionsPolicy

    def context(sessions: dict[str, float], min_replicas: int = 1) -> AutoscalingContext:
        return AutoscalingContext(
            deployment_id=None, deployment_name="EngineReplica", app_name="causalcast",
            current_num_replicas=len(sessions), target_num_replicas=len(sessions), running_replicas=[],
            total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics={"sessions": sessions},
            raw_metrics=None, capacity_adjusted_min_replicas=min_replicas, capacity_adjusted_max_replicas=8,
            policy_state={}, last_scale_up_time=None, last_scale_down_time=None, current_time=None, config=None,
        )

    policy = SessionsPolicy(target_sessions_per_replica=10)
    assert policy(context({"a": 12.0, "b": 9.0}))[0] == 3  # 21 sessions at 10 a replica
    assert policy(context({"a": 2.0, "b": 0.0}, min_replicas=2))[0] == 2  # never below the minimum
    assert policy(context({"a": 0.0}))[0] == 1
    with pytest.raises(ValueError):
        SessionsPolicy(0)


# -- the cluster (slow: Ray and two replicas start once for the module, ~30 s in all) -----------------
@dataclass
class Cluster:
    url: str  # Serve's HTTP proxy (the ingress)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A single-node Ray announces the machine's interface address by default and its processes then talk
    # over it; this keeps every Ray service, and so all test traffic, on 127.0.0.1 (read when ray imports;
    # its workers inherit it).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = pytest.importorskip("ray", reason="Ray is not installed (the 'ray' extra)")
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    from ray import serve

    from streaming.ray_serve.app import ClusterSettings, build_app
    from streaming.ray_serve.replica import ReplicaSettings

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = tempfile.mkdtemp(prefix="ccray", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp_dir, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 (any reason Ray cannot start is a reason to skip)
        shutil.rmtree(temp_dir, ignore_errors=True)
        pytest.skip(f"Ray cannot start on this machine: {e}")
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        replica = ReplicaSettings.from_command_line(
            "--models pitch testcard --codec-threads 1 --ice-loopback-only --max-sessions 3", drain_timeout_s=2.0,
            bind_host="127.0.0.1",  # Ray may know this node by another address; the replicas stay on loopback
        )
        settings = ClusterSettings(num_replicas=2, gpus_per_replica=0, cpus_per_replica=0.5, stats_period_s=0.2,
                                   ingress_cpus=0.25)
        serve.run(build_app(replica, settings), name="causalcast", route_prefix="/")
        yield Cluster(f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


async def _health(cluster: Cluster) -> dict:
    async with aiohttp.ClientSession() as http, http.get(cluster.url + "/healthz") as response:
        return await response.json()


async def _replica_ids(cluster: Cluster, count: int = 2, timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        ids = [r["replica"] for r in (await _health(cluster))["replicas"]]
        if len(ids) >= count or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.2)


async def _wait_reported(cluster: Cluster, predicate, timeout_s: float = 5.0) -> dict:  # noqa: ANN001
    """Wait until /healthz satisfies ``predicate`` and one more routing-stats period passed."""
    deadline = time.monotonic() + timeout_s
    while not predicate(health := await _health(cluster)):
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # > the 0.2 s stats period: the routers have seen it too
    return health


async def _pitch_session(cluster: Cluster, semitones: int = 4) -> Client:
    client = Client(cluster.ws_url)
    await client.connect()
    try:
        await client.start("pitch", {"semitones": semitones}, input_sample_rate_hz=RATE_HZ, audio="pcm16")
    except BaseException:
        await client.close()
        raise
    return client


async def _audio_round_trip(client: Client, seconds: float = 0.4) -> int:
    """Send ``seconds`` of a tone in 20 ms frames; returns the output samples received for it."""
    samples = tone(440, seconds, RATE_HZ)
    collector = MediaCollector(client.ready)
    for i in range(0, len(samples), FRAME):
        await client.send_audio(samples[i : i + FRAME])
    deadline = time.monotonic() + 5.0
    while len(collector.audio_samples(0)) < len(samples) - 2 * FRAME and time.monotonic() < deadline:
        item = await client.receive(timeout=max(0.05, deadline - time.monotonic()))
        if isinstance(item, dict):
            assert item.get("type") != "error", item
        else:
            collector.add(item)
    return len(collector.audio_samples(0))


# -- behaviour ----------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_sessions_spread_over_both_replicas(cluster: Cluster) -> None:
    replica_ids = await _replica_ids(cluster)
    assert len(replica_ids) == 2
    clients = [await _pitch_session(cluster) for _ in range(4)]
    try:
        placed = [c.ready["replica"] for c in clients]
        # Least loaded first gives two each on a quiet machine; a replica whose own admission refuses under
        # load (the router then moves on) or a routing report racing a placement may give 3 + 1. Both serve.
        assert set(placed) == set(replica_ids), placed
        assert max(placed.count(r) for r in replica_ids) <= 3, placed
        for client in clients:
            assert await _audio_round_trip(client) >= 0.4 * RATE_HZ - 2 * FRAME
        health = await _health(cluster)
        assert health["status"] == "ok" and health["sessions"] == 4
        # each replica's own count is where its sessions were placed (2 + 2, or the 3 + 1 allowed above)
        per_replica = {r: placed.count(r) for r in replica_ids}
        assert {r["replica"]: r["engine"]["sessions"] for r in health["replicas"]} == per_replica
        async with aiohttp.ClientSession() as http, http.get(cluster.url + "/metrics") as response:
            metrics = await response.text()
        for replica_id, count in per_replica.items():
            assert f'causalcast_sessions_active{{model="pitch",replica="{replica_id}"}} {count:.1f}' in metrics
        # Fill both replicas (3 sessions each): the next start is refused, with the replica's own reason.
        clients += [await _pitch_session(cluster) for _ in range(2)]
        await _wait_reported(cluster, lambda h: h["sessions"] == 6)
        with pytest.raises(ServerError) as refused:
            await _pitch_session(cluster)
        assert refused.value.code == "capacity" and "3 sessions is the configured maximum" in str(refused.value)
    finally:
        for client in clients:
            await client.close()


@pytest.mark.slow
async def test_broadcast_watched_through_the_ingress_from_the_other_replica(cluster: Cluster) -> None:
    producer = Client(cluster.ws_url)
    viewer = Client(cluster.ws_url)
    await producer.connect()
    await viewer.connect()
    try:
        await _wait_reported(cluster, lambda h: h["sessions"] == 0)
        ready = await producer.start("testcard", share=True, audio="pcm16", video="jpeg")
        # The viewer's socket first serves a session of its own on the other replica (the least loaded)...
        await _wait_reported(cluster, lambda h: h["sessions"] == 1)
        own = await viewer.start("pitch", input_sample_rate_hz=RATE_HZ)
        assert own["replica"] != ready["replica"]
        await viewer.stop()
        # ... then watches the producer: the ingress moves the socket to the producer's replica.
        watching = await viewer.watch(ready["session"], audio="pcm16", video="jpeg")
        assert watching["replica"] == ready["replica"] and watching["session"] == ready["session"]
        frames = []
        deadline = time.monotonic() + 10
        while len([f for f in frames if f.kind.name == "VIDEO"]) < 5 and time.monotonic() < deadline:
            item = await viewer.receive()
            if not isinstance(item, dict):
                frames.append(item)
        assert len([f for f in frames if f.kind.name == "VIDEO"]) >= 5
        async with aiohttp.ClientSession() as http, http.get(cluster.url + "/streams") as response:
            streams = (await response.json())["streams"]
        assert streams == [{"session": ready["session"], "model": "testcard", "viewers": 1,
                            "replica": ready["replica"]}]
        stranger = Client(cluster.ws_url)  # no replica holds it: the ingress asked them all
        async with stranger:
            with pytest.raises(ServerError) as unknown:
                await stranger.watch("nosuchsession")
        assert unknown.value.code == "unknown_session"
    finally:
        await viewer.close()
        await producer.close()


@pytest.mark.slow
async def test_webrtc_offer_answered_by_a_replica_media_bypasses_serve(cluster: Cluster) -> None:
    from streaming.client.webrtc import ArrayAudioTrack, RtcClient

    client = RtcClient(cluster.url)
    try:
        answer = await client.connect("pitch", {"semitones": 4}, audio=ArrayAudioTrack(tone(440, 2.0, 48_000)))
        assert answer["replica"] in await _replica_ids(cluster)
        await client.wait_connected(10)
        local, remote = client.selected_pair()
        # The media pair is UDP to the replica's own aiortc socket (Serve's proxy carries only HTTP).
        assert remote[0] == "127.0.0.1" and remote[1] != int(cluster.url.rsplit(":", 1)[1])
        assert (await client.expect("ready"))["model"] == "pitch"
        arrival, frame = await asyncio.wait_for(client.audio_frames.get(), 5)
        assert frame.sample_rate == 48_000
    finally:
        await client.close()


@pytest.mark.slow
async def test_drained_replica_takes_no_new_session(cluster: Cluster) -> None:
    from streaming.ray_serve.admin import drain

    await _wait_reported(cluster, lambda h: h["sessions"] == 0)
    before = await _pitch_session(cluster)
    drained_id = before.ready["replica"]
    clients = []
    try:
        result = await asyncio.to_thread(drain, drained_id)
        assert result["draining"] is True and result["sessions"] == 1
        await _wait_reported(cluster, lambda h: any(r["engine"]["draining"] for r in h["replicas"]))
        clients = [await _pitch_session(cluster) for _ in range(3)]
        assert all(c.ready["replica"] != drained_id for c in clients)
        assert await _audio_round_trip(before) > 0  # its own session goes on
        health = await _health(cluster)
        drained = next(r for r in health["replicas"] if r["replica"] == drained_id)
        assert drained["engine"]["draining"] and drained["engine"]["sessions"] == 1
    finally:
        await asyncio.to_thread(drain, drained_id, draining=False)
        for client in [before, *clients]:
            await client.close()


@pytest.mark.slow
async def test_killing_a_replica_ends_only_its_sessions(cluster: Cluster) -> None:
    import ray

    await _wait_reported(cluster, lambda h: h["sessions"] == 0 and not any(r["engine"]["draining"]
                                                                          for r in h["replicas"]))
    clients = [await _pitch_session(cluster) for _ in range(4)]
    try:
        victim = clients[0].ready["replica"]
        doomed = [c for c in clients if c.ready["replica"] == victim]
        survivors = [c for c in clients if c.ready["replica"] != victim]
        assert len(doomed) == 2 and len(survivors) == 2
        (actor_name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                         if a["name"].endswith(f"#{victim}")]
        ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
        for client in doomed:
            error = await client.expect("error", timeout=10)
            assert error["code"] == "replica_lost" and error["fatal"], error
        for client in survivors:
            assert await _audio_round_trip(client) >= 0.4 * RATE_HZ - 2 * FRAME
        # The client whose replica died keeps its socket: its next start lands on a live replica.
        await _wait_reported(cluster, lambda h: victim not in [r["replica"] for r in h["replicas"]], timeout_s=15)
        again = await doomed[0].start("pitch", input_sample_rate_hz=RATE_HZ, audio="pcm16")
        assert again["replica"] != victim
        assert await _audio_round_trip(doomed[0]) > 0
    finally:
        for client in clients:
            await client.close()

