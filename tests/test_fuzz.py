"""Seeded fuzzing of everything a client can send: WebSocket frames, control JSON, SDP offers, data-channel
messages. The real server on 127.0.0.1 must answer each with a clear error or a quiet close, never an
unhandled exception, and a monitor session beside it must not suffer. The fuzzing clients run as a process
of their own (tests/fuzz_clients.py), as real clients would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import aiohttp
from conftest import make_server_config, serve_app
from fuzz_clients import ErrorLog
from hardening_helpers import Monitor

from streaming.transports.webrtc import RtcConfig

SEED = 18
FUZZ_CLIENTS = Path(__file__).with_name("fuzz_clients.py")


async def test_fuzzed_client_input_gets_errors_or_quiet_closes_never_crashes():
    config = make_server_config(models=("pitch", "testcard"), webrtc=RtcConfig(loopback_only=True,
                                                                               connect_timeout_s=2.0))
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    server, runner = await serve_app(config)
    try:
        async with Monitor(server.ws_url) as monitor:
            clients = await asyncio.create_subprocess_exec(
                sys.executable, str(FUZZ_CLIENTS), server.ws_url, server.http_url, str(SEED),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(clients.communicate(), 180)
            assert clients.returncode == 0, err.decode()[-3000:]
            report = await monitor.finish()
        async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/healthz") as r:
            assert r.status == 200
    finally:
        logging.getLogger().removeHandler(errors)
        await runner.cleanup()
    seen = json.loads(out.decode().strip().splitlines()[-1])
    print(f"fuzz: {seen}; monitor: {report.late_chunks} of {report.stats['chunks_out']} chunks late")
    assert seen["replies"] > 100
    assert set(seen["offer_statuses"]) <= {"200", "400", "503"}, seen
    assert not seen["client_errors"], seen["client_errors"]
    assert not errors.records, [f"{r.name}: {r.getMessage()}" for r in errors.records[:5]]
    # Up to 1 % late. This was 5 % while full garbage collections walked every start-up object (torch, aiortc:
    # ~200k) and held the GIL for 50-140 ms each, a few times per run of allocation-heavy fuzz traffic (3 of
    # 411 and 7 of 417 chunks late); the server now freezes those objects after start-up (streaming/server.py,
    # tests/test_hardening_offers.py). With the fuzzing clients in the server's own process their work queued
    # on its loop and still made 6-7 of ~415 chunks late in 2 of 10 runs; they now run as a process of their own.
    report.assert_unaffected(max_late=max(2, report.stats["chunks_out"] // 100))
