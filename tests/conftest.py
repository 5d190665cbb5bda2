"""Shared fixtures: a real causalcast server on 127.0.0.1 (ephemeral port) inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from streaming.engine.core import Engine, EngineConfig
from streaming.engine.scheduler import AdmissionLimits
from streaming.server import ENGINE_KEY, ServerConfig, create_app, runner_options
from streaming.transports.control import ControlLimits
from streaming.transports.webrtc import RtcConfig
from streaming.transports.ws import WsConfig


@dataclass
class RunningServer:
    """A started server: its base URLs and its app (for white-box checks such as leak counts)."""

    app: web.Application
    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def engine(self) -> Engine:
        return self.app[ENGINE_KEY]


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await start_server(models=("pitch",), max_utilization=0.8, ...)`` -> RunningServer."""
    runners: list[web.AppRunner] = []

    async def start(
        models: tuple[str, ...] = ("pitch", "testcard"),
        *,
        max_utilization: float = 0.8,
        max_sessions: int = 256,
        max_loop_busy: float = AdmissionLimits.max_loop_busy,
        max_message_bytes: int = 2 * 1024 * 1024,
        stats_interval_s: float = 1.0,
        generators: dict[str, Any] | None = None,
        control: ControlLimits | None = None,
        **engine_overrides: Any,
    ) -> RunningServer:
        engine = dataclasses.replace(
            EngineConfig(
                limits=AdmissionLimits(
                    max_utilization=max_utilization, max_sessions=max_sessions, max_loop_busy=max_loop_busy
                )
            ),
            **engine_overrides,
        )
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            models=models,
            engine=engine,
            ws=WsConfig(max_message_bytes=max_message_bytes, stats_interval_s=stats_interval_s),
            control=control or ControlLimits(),
        )
        runner = web.AppRunner(create_app(config, generators), shutdown_timeout=2.0, **runner_options(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return RunningServer(runner.app, port)

    yield start
    for runner in runners:
        await runner.cleanup()


# -- a server from a full ServerConfig (the WebRTC and browser tests) --------------------------------------
async def serve_app(config: ServerConfig, port: int = 0) -> tuple[RunningServer, web.AppRunner]:
    """Start the real app for ``config`` on 127.0.0.1 (an ephemeral port unless given); the caller cleans up."""
    config = dataclasses.replace(config, host="127.0.0.1", port=port)
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=2.0, **runner_options(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return RunningServer(runner.app, runner.addresses[0][1]), runner


def make_server_config(**overrides: Any) -> ServerConfig:
    """The default test config (diagnostic models on the CPU, WebRTC confined to loopback) with ``overrides``."""
    config = ServerConfig(host="127.0.0.1", port=0, webrtc=RtcConfig(loopback_only=True))
    return dataclasses.replace(config, **overrides)


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    """A default server on the test's loop."""
    running, runner = await serve_app(make_server_config())
    try:
        yield running
    finally:
        await runner.cleanup()


@dataclass
class LiveServer(RunningServer):
    """A server on a thread of its own; ``call`` runs a coroutine on its loop and returns the result."""

    loop: asyncio.AbstractEventLoop | None = None

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def run_live_server(config: ServerConfig | None = None, port: int = 0) -> Iterator[LiveServer]:
    """Serve ``config`` on a thread and loop of its own until the block ends (on ``port``, or an ephemeral one)."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            running, started["runner"] = loop.run_until_complete(serve_app(config or make_server_config(), port))
            started["server"] = LiveServer(running.app, running.port, loop)
        except BaseException as e:  # surfaced to the caller below
            started["error"] = e
        ready.set()
        if "error" not in started:
            loop.run_forever()

    thread = threading.Thread(target=serve, name="live-server", daemon=True)
    thread.start()
    ready.wait(60)
    if "error" in started:
        raise started["error"]
    try:
        yield started["server"]
    finally:
        asyncio.run_coroutine_threadsafe(started["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    """A default server on a thread of its own, for synchronous tests (a browser driven by selenium, whose
    blocking calls would stall a server on the test's loop). Shared by a module's tests."""
    with run_live_server() as running:
        yield running


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's model tests, as a model is served per core: more only contend with
    the rest of the suite (a shipped VC checkpoint test took 66 s instead of 0.8 s with the default threads on
    a busy 2-core machine). The previous setting comes back after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
