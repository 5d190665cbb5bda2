"""Runtime load bench: N concurrent WebSocket clients stream real-time audio through the `pitch` model.

Starts a real server process on 127.0.0.1 and, for each N in the sweep, connects N clients that each send
20 ms PCM16 frames on a wall-clock schedule and receive the shifted audio back. Prints one JSON line per N:

    sessions          N asked for; admitted: how many the server accepted (admission control)
    held_real_time    True when every admitted session kept up: late chunks <= 1 % and no frame lost
    latency_ms_p50/99 client round trip per 20 ms chunk (send of input frame -> arrival of its output)
    late_chunk_rate   server-side share of chunks finished after their allowance
    rss_mb_per_session  server resident memory growth divided by N
    loop_busy         share of wall time the server's event loop thread was on CPU, mid-stream
    loop_wait/demand  ... and runnable but waiting on a run queue; demand = busy + wait (what admission prices)

The clients run in this process and share the machine's cores with the server: on a 2-core machine the
client side is a large part of the load, so the numbers are a floor for a dedicated server.

    python bench/runtime_load.py [--max-sessions 256] [--seconds 5] [--models pitch]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streaming.client import Client, ServerError  # noqa: E402

RATE_HZ = 16_000
FRAME = 320  # 20 ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


async def refusals(metrics_url: str) -> dict[str, int]:
    """Sessions refused so far, by the reason label of the server's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(metrics_url) as r:
        text = await r.text()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("causalcast_sessions_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = counts.get(reason, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


async def one_client(url: str, seconds: float, start_at: float, results: list[dict]) -> None:
    client = Client(url)
    await client.connect()
    try:
        try:
            await client.start("pitch", {"semitones": 3}, input_sample_rate_hz=RATE_HZ, audio="pcm16")
        except ServerError as e:
            results.append({"admitted": False, "reason": e.code})
            return
        signal = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * RATE_HZ)) / RATE_HZ)).astype(np.float32)
        num_frames = len(signal) // FRAME
        sent_at = np.zeros(num_frames)
        latencies: list[float] = []
        received = 0

        async def send() -> None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            t0 = time.monotonic()
            for i in range(num_frames):
                sent_at[i] = time.monotonic()
                await client.send_audio(signal[i * FRAME : (i + 1) * FRAME], pts=i * FRAME)
                await asyncio.sleep(max(0.0, t0 + (i + 1) * FRAME / RATE_HZ - time.monotonic()))

        sender = asyncio.create_task(send())
        deadline = start_at + seconds + 5
        while received < num_frames * FRAME and time.monotonic() < deadline:
            try:
                item = await client.receive(timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            if isinstance(item, dict):
                continue
            now = time.monotonic()
            index = item.pts // FRAME
            if index < num_frames:
                latencies.append(now - sent_at[index])
            received += len(item.payload) // 2
        await sender
        stopped = await client.stop()
        results.append({"admitted": True, "latencies": latencies, "received": received,
                        "expected": num_frames * FRAME, "stats": stopped["stats"]})
    finally:
        await client.close()


async def run_level(url: str, num_sessions: int, seconds: float, pid: int, rss_idle: float) -> dict:
    results: list[dict] = []
    start_at = time.monotonic() + 0.5 + num_sessions * 0.004
    tasks = [asyncio.create_task(one_client(url, seconds, start_at + (i % 50) * 0.0004, results))
             for i in range(num_sessions)]
    await asyncio.sleep(max(0.0, start_at - time.monotonic()) + seconds / 2)
    rss_loaded = rss_mb(pid)
    async with aiohttp.ClientSession() as http:  # the server's own view of its event loop, mid-stream
        async with http.get(url.replace("ws://", "http://").replace("/ws", "/healthz")) as r:
            loop_status = (await r.json())["engine"]["event_loop"]
    await asyncio.gather(*tasks)
    refused_by_reason = await refusals(url.replace("ws://", "http://").replace("/ws", "/metrics"))
    admitted = [r for r in results if r["admitted"]]
    lat = np.concatenate([r["latencies"] for r in admitted]) * 1000 if admitted else np.zeros(0)
    chunks = sum(r["stats"]["chunks_out"] for r in admitted)
    late = sum(r["stats"]["late_chunks"] for r in admitted)
    lost = sum(r["expected"] - r["received"] for r in admitted)
    late_rate = late / chunks if chunks else 0.0
    return {
        "bench": "runtime_load",
        "model": "pitch",
        "sessions": num_sessions,
        "admitted": len(admitted),
        "refused": num_sessions - len(admitted),
        "held_real_time": bool(admitted) and late_rate <= 0.01 and lost == 0,
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "late_chunk_rate": round(late_rate, 4),
        "lost_samples": int(lost),
        "rss_mb_per_session": round((rss_loaded - rss_idle) / max(1, len(admitted)), 3),
        "server_rss_mb": round(rss_loaded, 1),
        "loop_busy": loop_status["busy"],
        "loop_wait": loop_status.get("wait"),
        "loop_demand": loop_status.get("demand"),
        "loop_lag_ms": loop_status["lag_ms"],
        "loop_cost_line": [loop_status["busy_base"], loop_status["busy_per_session"]],
        "loop_demand_per_session_at_top": loop_status.get("demand_per_session_at_top"),
        "refused_by_reason": refused_by_reason,  # /metrics causalcast_sessions_refused, this server so far
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-sessions", type=int, default=256, help="largest N of the sweep")
    parser.add_argument("--seconds", type=float, default=5.0, help="stream length per level")
    parser.add_argument("--models", default="pitch", help="server --models spec for `pitch`")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - the server under test, started once
        [sys.executable, "-m", "streaming", "serve", "--port", str(port), "--models", args.models,
         "--max-sessions", "100000", "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/healthz")
        await asyncio.sleep(0.5)
        rss_idle = rss_mb(server.pid)
        header = {"bench": "runtime_load", "cpu_count": os.cpu_count(), "server_rss_idle_mb": round(rss_idle, 1)}
        print(json.dumps(header), flush=True)
        n = 1
        while n <= args.max_sessions:
            line = await run_level(f"ws://127.0.0.1:{port}/ws", n, args.seconds, server.pid, rss_idle)
            print(json.dumps(line), flush=True)
            if line["refused"]:
                break  # admission control has found the limit
            n *= 2
            await asyncio.sleep(1.0)
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
