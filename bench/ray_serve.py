"""What Ray Serve's path costs: round trip and sessions held through the ingress vs straight to one server.

Starts, on 127.0.0.1, a local Ray cluster running the causalcast Serve application with ONE engine replica
(``--models pitch``) and, beside it, one plain ``causalcast serve`` process with the same options; then
measures both the same way, alternating, in one run:

    ping_ms_p50/p99     WebSocket `ping` -> `pong` (the protocol's own round trip; through Serve: client ->
                        Serve's HTTP proxy -> ingress replica -> engine replica and back)
    chunk_ms_p50/p99    one real-time `pitch` session: a 20 ms PCM16 frame sent -> its output frame back
    held                for each N, whether N concurrent real-time sessions all kept up (late chunks <= 1 %,
                        nothing lost): the largest N held is `max_sessions_held`

and prints one JSON line per measurement, then a summary line with Serve/straight ratios (the proxy's
cost). Both paths share this machine's cores with each other and with Ray's own processes (GCS, raylet,
Serve controller and proxy), so compare the ratios, not the absolute numbers, with other machines.

    python bench/ray_serve.py [--max-sessions 32] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from runtime_load import free_port, one_client, wait_healthy  # noqa: E402

from streaming.client import Client  # noqa: E402

SERVE_ARGS = "--models pitch --max-sessions 100000 --codec-threads 1 --log-level WARNING"


async def ping_round_trip(ws_url: str, count: int) -> dict:
    async with Client(ws_url) as client:
        times = []
        for i in range(count + 5):
            t0 = time.perf_counter()
            await client.send({"type": "ping", "t": i})
            await client.expect("pong")
            if i >= 5:  # the first pings open the relay's upstream socket
                times.append((time.perf_counter() - t0) * 1000)
    return {"ping_ms_p50": round(float(np.percentile(times, 50)), 3),
            "ping_ms_p99": round(float(np.percentile(times, 99)), 3)}


async def sessions(ws_url: str, num_sessions: int, seconds: float) -> dict:
    results: list[dict] = []
    start_at = time.monotonic() + 0.5 + num_sessions * 0.01
    await asyncio.gather(*(one_client(ws_url, seconds, start_at + i * 0.0004, results) for i in range(num_sessions)))
    admitted = [r for r in results if r["admitted"]]
    lat = np.concatenate([r["latencies"] for r in admitted]) * 1000 if admitted else np.zeros(0)
    chunks = sum(r["stats"]["chunks_out"] for r in admitted)
    late = sum(r["stats"]["late_chunks"] for r in admitted)
    lost = sum(r["expected"] - r["received"] for r in admitted)
    late_rate = late / chunks if chunks else 0.0
    return {
        "sessions": num_sessions,
        "admitted": len(admitted),
        "held": len(admitted) == num_sessions and late_rate <= 0.01 and lost == 0,
        "chunk_ms_p50": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "chunk_ms_p99": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "late_chunk_rate": round(late_rate, 4),
        "lost_samples": int(lost),
    }


def start_serve(temp_dir: str) -> str:
    """Ray + the causalcast app with one engine replica; returns the ingress's ws:// URL."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # keep every Ray service on 127.0.0.1 (a single-node Ray otherwise talks over the interface address)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import serve

    from streaming.ray_serve.app import ClusterSettings, build_app
    from streaming.ray_serve.replica import ReplicaSettings

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp_dir, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    replica = ReplicaSettings.from_command_line(SERVE_ARGS, bind_host="127.0.0.1", torch_threads=1)
    cluster = ClusterSettings(num_replicas=1, gpus_per_replica=0, cpus_per_replica=0.5, ingress_cpus=0.25)
    serve.run(build_app(replica, cluster), name="causalcast", route_prefix="/")
    return f"ws://127.0.0.1:{port}/ws"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-sessions", type=int, default=32, help="largest N of the sweep")
    parser.add_argument("--seconds", type=float, default=3.0, help="stream length per level")
    parser.add_argument("--pings", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    straight_server = subprocess.Popen(  # noqa: ASYNC220 - the server under test, started once
        [sys.executable, "-m", "streaming", "serve", "--port", str(port), "--torch-threads", "1", *SERVE_ARGS.split()],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    temp_dir = tempfile.mkdtemp(prefix="ccbench", dir="/tmp")
    try:
        serve_url = await asyncio.to_thread(start_serve, temp_dir)
        await wait_healthy(f"http://127.0.0.1:{port}/healthz")
        await wait_healthy(serve_url.replace("ws://", "http://").replace("/ws", "/healthz"))
        paths = {"straight": f"ws://127.0.0.1:{port}/ws", "serve": serve_url}
        print(json.dumps({"bench": "ray_serve", "cpu_count": os.cpu_count(), "serve_args": SERVE_ARGS}), flush=True)
        summary: dict[str, dict] = {name: {"max_sessions_held": 0} for name in paths}
        for name, url in paths.items():
            line = {"bench": "ray_serve", "path": name, **await ping_round_trip(url, args.pings)}
            summary[name].update(line)
            print(json.dumps(line), flush=True)
        held_on = set(paths)
        n = 1
        while n <= args.max_sessions and held_on:
            for name in sorted(held_on):  # alternate the two paths level by level
                line = {"bench": "ray_serve", "path": name, **await sessions(paths[name], n, args.seconds)}
                print(json.dumps(line), flush=True)
                if n == 1:
                    summary[name].update(chunk_ms_p50=line["chunk_ms_p50"], chunk_ms_p99=line["chunk_ms_p99"])
                if line["held"]:
                    summary[name]["max_sessions_held"] = n
                else:
                    held_on.discard(name)
                await asyncio.sleep(1.0)
            n *= 2
        s, d = summary["serve"], summary["straight"]
        print(json.dumps({
            "bench": "ray_serve", "summary": True, "straight": d, "serve": s,
            "ping_p50_ratio": round(s["ping_ms_p50"] / d["ping_ms_p50"], 2),
            "chunk_p50_ratio": round(s["chunk_ms_p50"] / d["chunk_ms_p50"], 2) if d.get("chunk_ms_p50") else None,
            "sessions_held_ratio": round(s["max_sessions_held"] / max(1, d["max_sessions_held"]), 2),
            "sweep_capped_at": args.max_sessions,
        }), flush=True)
    finally:
        straight_server.terminate()
        straight_server.wait(timeout=15)
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
