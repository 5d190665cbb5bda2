"""The CLI starts a real server process; SIGTERM closes sessions with a message and exits promptly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp

from streaming.client import Client
from streaming.protocol import MediaKind

from streaming_helpers import tone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                async with http.get(url) as r:
                    return await r.json()
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
    raise TimeoutError("server did not come up")


async def test_sigterm_closes_sessions_and_exits():
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a real server process; polled without blocking
        [sys.executable, "-m", "streaming", "serve", "--port", str(port), "--models", "pitch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        health = await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        assert [m["name"] for m in health["models"] if m["status"] == "loaded"] == ["pitch"]
        async with Client(f"ws://127.0.0.1:{port}/ws") as client:
            await client.start("pitch", input_sample_rate_hz=16000, audio="pcm16")
            await client.send_audio(tone(300, 0.1))
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            error = await client.expect("error", timeout=10)
            assert error["code"] == "shutdown" and error["fatal"]
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 8
        out = proc.stdout.read()
        assert f"http://127.0.0.1:{port}/" in out  # the URL is printed for the user
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_model_option_exits_with_a_clear_message():
    proc = subprocess.run(
        [sys.executable, "-m", "streaming", "serve", "--port", str(free_port()), "--models", "pitch:colour=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "bad options for model 'pitch'" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "streaming", "serve", "--port", str(free_port()), "--models", "warp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown model 'warp'" in proc.stderr


async def test_workers_share_the_port_serve_sessions_and_stop_together():
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a real server process; polled without blocking
        [sys.executable, "-m", "streaming", "serve", "--port", str(port), "--models", "pitch", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        await wait_healthy(url, proc)
        seen: dict[int, int] = {}  # worker index -> pid, as the processes answering say
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            while len(seen) < 2 and time.monotonic() < deadline:  # new connections: the kernel spreads them
                async with http.get(url) as r:
                    health = await r.json()
                seen[health["worker"]] = health["pid"]
                await asyncio.sleep(0.05)
        assert sorted(seen) == [0, 1] and len(set(seen.values())) == 2 and proc.pid not in seen.values()
        for _ in range(4):  # sessions work through whichever process takes the connection
            async with Client(f"ws://127.0.0.1:{port}/ws") as client:
                await client.start("pitch", input_sample_rate_hz=16000, audio="pcm16")
                await client.send_audio(tone(300, 0.2))
                item = await client.receive(timeout=10)
                while isinstance(item, dict):  # ready and other control messages, then the converted audio
                    item = await client.receive(timeout=10)
                assert item.kind == MediaKind.AUDIO
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        for pid in seen.values():  # no worker outlives the parent
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"worker {pid} still running")
        assert proc.stdout.read().count(f"http://127.0.0.1:{port}/ (worker") == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
