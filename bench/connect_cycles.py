"""Connect-cycle leak check: RSS, file descriptors, threads and asyncio tasks before and after many cycles.

One process holds the real server (127.0.0.1, ephemeral port) and the clients. A WebSocket cycle
connects, starts a pitch session, sends 100 ms of audio, stops and closes; a WebRTC cycle offers a pitch
session with an audio track and a data channel, waits for ICE/DTLS and `ready`, and closes (whatever the
track sent by then went through the session). After warm-up cycles (first-use
allocations, codec and thread pools), the counts are taken, the cycles run, the engine is given a moment
to reap, and the counts are taken again. Prints one JSON line:

    python bench/connect_cycles.py --ws 1000 --webrtc 100
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import threading
import time
from typing import Any

import numpy as np
import torch
from aiohttp import web

from streaming.client import Client
from streaming.client.webrtc import ArrayAudioTrack, RtcClient
from streaming.server import ServerConfig, create_app, runner_options
from streaming.transports.webrtc import RtcConfig


def counts() -> dict[str, float]:
    """RSS (MiB), open fds, threads, asyncio tasks of this process now."""
    gc.collect()
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {
        "rss_mib": round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "tasks": len(asyncio.all_tasks()),
    }


async def ws_cycle(url: str, audio: np.ndarray) -> None:
    async with Client(url) as client:
        await client.start("pitch", input_sample_rate_hz=16_000, audio="pcm16")
        for i in range(0, len(audio), 320):
            await client.send_audio(audio[i : i + 320])
        await client.stop()


async def rtc_cycle(base_url: str, audio: np.ndarray) -> None:
    client = RtcClient(base_url)
    try:
        await client.connect("pitch", audio=ArrayAudioTrack(audio))
        await client.wait_connected()
        await client.expect("ready")
    finally:
        await client.close()


async def run(num_ws: int, num_rtc: int, warmup: int) -> dict[str, Any]:
    config = ServerConfig(host="127.0.0.1", port=0, models=("pitch",), webrtc=RtcConfig(loopback_only=True))
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=2.0, **runner_options(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ws_url, http_url = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
    audio = (0.3 * np.sin(2 * np.pi * 300 * np.arange(1600) / 16_000)).astype(np.float32)
    result: dict[str, Any] = {"bench": "connect_cycles", "ws_cycles": num_ws, "webrtc_cycles": num_rtc}
    try:
        for _ in range(warmup):
            await ws_cycle(ws_url, audio)
            if num_rtc:
                await rtc_cycle(http_url, audio)
        await asyncio.sleep(1.0)
        before = counts()
        started = time.monotonic()
        for _ in range(num_ws):
            await ws_cycle(ws_url, audio)
        result["ws_seconds"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(1.0)
        after_ws = counts()
        started = time.monotonic()
        for _ in range(num_rtc):
            await rtc_cycle(http_url, audio)
        result["webrtc_seconds"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(2.0)  # peers' close paths and aiortc's timers finish
        after = counts()
    finally:
        await runner.cleanup()
    result["before"], result["after_ws"], result["after_webrtc"] = before, after_ws, after
    result["growth"] = {k: round(after[k] - before[k], 1) for k in before}
    return result


def main() -> None:
    """Run the cycles and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ws", type=int, default=1000)
    parser.add_argument("--webrtc", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(asyncio.run(run(args.ws, args.webrtc, args.warmup))), flush=True)


if __name__ == "__main__":
    main()
