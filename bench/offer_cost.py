"""Event-loop cost of answering WebRTC offers, and the garbage-collection pauses offer traffic triggers.

One process holds the real server (127.0.0.1, ephemeral port, ``pitch``) and the HTTP client posting the
offers (real loopback offers, answered and never connected). Every loop callback is timed in CPU time of
the loop thread (``time.thread_time``: a busy machine does not inflate it), and every garbage collection
likewise (``gc.callbacks``). Run once as the server runs (start-up objects frozen out of the collector,
streaming/server.py) and once with that freeze undone, the way the server ran before. Prints one JSON line
per variant:

    loop_cpu_ms_per_offer      loop-thread CPU per answered offer (server and client side)
    worst_callback_cpu_ms      the longest single loop callback: how long the loop stood still at once
    full_collections_during_offers   generation-2 collections the offers triggered (when one triggers
                                     depends on the process's history; often none in a short run)
    worst_full_collection_cpu_ms     the longest of those and of one forced at the end, with every answered
                                     peer alive: the loop stall one full collection causes at this load

    python bench/offer_cost.py --offers 40
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import gc
import json
import time
from typing import Any

import aiohttp
import torch
from aiohttp import web

from streaming.client.webrtc import loopback_offer_sdp
from streaming.server import ServerConfig, create_app, runner_options
from streaming.transports.webrtc import RtcConfig

_callback_cpu_s: list[float] = []
_original_run = asyncio.events.Handle._run


def _timed_run(handle: asyncio.events.Handle) -> None:
    started = time.thread_time()
    _original_run(handle)
    _callback_cpu_s.append(time.thread_time() - started)


class Collections:
    """CPU seconds of each full (generation 2) collection while installed."""

    def __init__(self) -> None:
        self.full_s: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` entry: note when a collection starts, time it when it stops."""
        if phase == "start":
            self._started = time.thread_time()
        elif info["generation"] == 2:
            self.full_s.append(time.thread_time() - self._started)


async def run(num_offers: int, frozen: bool) -> dict[str, Any]:
    config = ServerConfig(host="127.0.0.1", port=0, models=("pitch",),
                          webrtc=RtcConfig(loopback_only=True, connect_timeout_s=30.0))
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=2.0, **runner_options(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/offer"
    if not frozen:
        gc.unfreeze()  # as before the server froze its start-up objects
    sdp = await loopback_offer_sdp()
    collections = Collections()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"type": "offer", "sdp": sdp, "model": "pitch"}
            async with http.post(url, json=body) as r:  # warm-up: first-use imports and allocations
                assert r.status == 200, await r.text()
            gc.callbacks.append(collections)
            asyncio.events.Handle._run = _timed_run  # type: ignore[method-assign]
            _callback_cpu_s.clear()
            cpu = time.thread_time()
            for _ in range(num_offers):
                async with http.post(url, json=body) as r:
                    assert r.status == 200, await r.text()
            cpu = time.thread_time() - cpu
            asyncio.events.Handle._run = _original_run  # type: ignore[method-assign]
            callbacks_s, automatic_s = list(_callback_cpu_s), list(collections.full_s)
            gc.collect()  # one full collection with every answered peer alive
    finally:
        asyncio.events.Handle._run = _original_run  # type: ignore[method-assign]
        if collections in gc.callbacks:
            gc.callbacks.remove(collections)
        await runner.cleanup()
    return {
        "bench": "offer_cost",
        "startup_objects_frozen": frozen,
        "offers": num_offers,
        "loop_cpu_ms_per_offer": round(cpu / num_offers * 1000, 2),
        "worst_callback_cpu_ms": round(max(callbacks_s) * 1000, 2),
        "full_collections_during_offers": len(automatic_s),
        "worst_full_collection_cpu_ms": round(max(collections.full_s) * 1000, 1),
        "torch_threads": torch.get_num_threads(),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for frozen in (True, False):
        print(json.dumps(await run(args.offers, frozen)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
