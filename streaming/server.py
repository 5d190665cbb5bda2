"""The causalcast HTTP server: routes, model loading, engine start-up and graceful shutdown.

Routes: ``GET /`` the web page (``web/``), ``GET /healthz`` status JSON, ``GET /metrics`` Prometheus text,
``GET /config`` client settings (ICE servers), ``GET /streams`` shared sessions viewers can watch,
``GET /ws`` the WebSocket protocol, ``POST /offer`` WebRTC signalling (one SDP offer in, one answer out:
a session, or a viewer of a shared one; see streaming/transports/webrtc.py), ``DELETE /offer/{offer_id}``
a client cancelling its offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from models.errors import AuthError
from models.registry import DEFAULT_MODELS, catalogue, load_model, parse_model_spec
from streaming import __version__
from streaming.auth import AccessConfig, check_access_config, turn_credentials
from streaming.broadcast import BroadcastHub
from streaming.engine.core import Engine, EngineConfig
from streaming.guard import ACCESS_KEY, detail_allowed, make_guard
from streaming.metrics import Metrics
from streaming.protocol import PROTOCOL_VERSION
from streaming.transports.control import ControlLimits
from streaming.transports.webrtc import RtcConfig, RtcHub
from streaming.transports.ws import WsConfig, WsConnection

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"

ENGINE_KEY = web.AppKey("engine", Engine)
CONFIG_KEY = web.AppKey("config", "ServerConfig")
CONNECTIONS_KEY = web.AppKey("connections", set)
CODEC_POOL_KEY = web.AppKey("codec_pool", ThreadPoolExecutor)
RTC_KEY = web.AppKey("rtc", RtcHub)
BROADCASTS_KEY = web.AppKey("broadcasts", BroadcastHub)
WORKER_KEY = web.AppKey("worker", int)  # index of this process under --workers (0 when alone)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `causalcast serve` can set."""

    host: str = "127.0.0.1"
    port: int = 8080
    models: tuple[str, ...] = DEFAULT_MODELS  # "name[:key=value,...]" specs
    engine: EngineConfig = field(default_factory=EngineConfig)
    ws: WsConfig = field(default_factory=WsConfig)
    control: ControlLimits = field(default_factory=ControlLimits)  # what one client connection may send
    codec_threads: int = 2  # video encoding pool shared by all sessions
    ice_servers: tuple[dict[str, Any], ...] = ()  # STUN/TURN for WebRTC clients, served at /config
    webrtc: RtcConfig = field(default_factory=RtcConfig)
    max_viewers_per_stream: int = 64  # watchers of one shared session (encoded once, fanned out)
    web_root: Path = WEB_ROOT
    shutdown_timeout_s: float = 5.0
    # A connection must finish its request's headers this long after connecting (or after its previous
    # response), or it is closed: half-sent requests (slowloris) and idle keep-alives do not hold sockets.
    http_idle_timeout_s: float = 10.0
    max_path_chars: int = 1024  # longer request paths are refused with 400 before any route sees them
    access: AccessConfig = field(default_factory=AccessConfig)  # tokens, origins, per-client caps, TURN


def runner_options(config: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for aiohttp's ``run_app`` / ``AppRunner`` that carry the server's HTTP limits.

    aiohttp arms its keep-alive timer when a connection is made and closes the connection when it fires
    while no complete request has arrived, so the keep-alive timeout is also the header timeout. After a
    response to a request whose body was not read (an offer refused before its body, or cut off for
    arriving too slowly), aiohttp reads and discards the rest for the lingering time (so the client is not
    reset before it reads the response), then closes: 2 s, not aiohttp's 10, so a trickling client is let go.
    """
    return {"keepalive_timeout": config.http_idle_timeout_s, "lingering_time": 2.0}


def load_models(config: ServerConfig) -> dict[str, Any]:
    """Build every configured generator on the engine's device.

    The composition root: when `tts` is served, the avatar speaks text with that very generator (one TTS in
    memory, its sessions in the same cache) instead of building a private one, so `tts` is built first.
    """
    specs = [parse_model_spec(spec) for spec in config.models]
    generators: dict[str, Any] = {}
    for name, options in sorted(specs, key=lambda spec: spec[0] == "avatar"):
        if name == "avatar" and "tts" in generators and "tts" not in options:
            options["tts"] = generators["tts"]
        generators[name] = load_model(name, config.engine.device, options)
    return {name: generators[name] for name, _ in specs}  # in the configured order


def create_app(config: ServerConfig, generators: dict[str, Any] | None = None) -> web.Application:
    """The aiohttp application; models load and warm up when it starts."""
    check_access_config(config.access, config.host)
    metrics = Metrics()
    guard = make_guard(config.access, metrics, config.max_path_chars)
    app = web.Application(client_max_size=config.ws.max_message_bytes, middlewares=[guard])
    app[CONFIG_KEY] = config
    app[CONNECTIONS_KEY] = set()
    engine = Engine(generators if generators is not None else load_models(config), config.engine, metrics)
    app[ENGINE_KEY] = engine
    app[CODEC_POOL_KEY] = ThreadPoolExecutor(max_workers=config.codec_threads, thread_name_prefix="codec")

    app.router.add_get("/", _index)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/config", _client_config)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/streams", _streams)
    app[BROADCASTS_KEY] = BroadcastHub(app[CODEC_POOL_KEY], config.max_viewers_per_stream)
    app[RTC_KEY] = RtcHub(engine, config.webrtc, ice_servers=config.ice_servers, broadcasts=app[BROADCASTS_KEY],
                          control=config.control)
    app.router.add_post("/offer", app[RTC_KEY].handle_offer)
    app.router.add_delete("/offer/{offer_id}", app[RTC_KEY].handle_cancel)
    if config.web_root.is_dir():
        app.router.add_static("/web/", config.web_root)
    app.on_startup.append(_start_engine)
    app.on_shutdown.append(_close_connections)
    app.on_cleanup.append(_stop_engine)
    return app


async def _start_engine(app: web.Application) -> None:
    await app[ENGINE_KEY].start()
    freeze_startup_objects()


def freeze_startup_objects() -> int:
    """Move every object alive after start-up out of the garbage collector's sight; returns how many.

    Why: torch, aiortc and the models leave ~200k long-lived objects, and a full (generation 2) collection
    walks all of them, holding the GIL for 50-140 ms (measured on a 2-core VM). Allocation-heavy client
    traffic (answering WebRTC offers, fuzzed messages) triggers such collections every few seconds, and each
    one stalled the event loop and the engine's step thread alike: the late chunks the fuzz test saw. Frozen
    objects are never scanned again (nor freed if they became cyclic garbage later, a small price for
    objects that live as long as the server); what clients make afterwards is collected as usual. Undone
    when the app is cleaned up.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _close_connections(app: web.Application) -> None:
    connections = list(app[CONNECTIONS_KEY])
    if connections:
        log.info("closing %d connections", len(connections))
    await asyncio.gather(*(c.shutdown() for c in connections), app[RTC_KEY].shutdown(), return_exceptions=True)


async def _stop_engine(app: web.Application) -> None:
    await app[ENGINE_KEY].stop()
    app[CODEC_POOL_KEY].shutdown(wait=True)
    # What start-up froze may be garbage now (this app's models, its engine): let the collector have it, or a
    # process that serves app after app (the tests) would keep every one. A live server refreezes at start.
    gc.unfreeze()


async def _index(request: web.Request) -> web.StreamResponse:
    index = request.app[CONFIG_KEY].web_root / "index.html"
    if not index.is_file():
        return web.Response(text="causalcast is running; the web page is not installed.\n")
    return web.FileResponse(index)


async def _healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    public = {"status": "ok", "protocol": PROTOCOL_VERSION}
    if not detail_allowed(request, request.app[CONFIG_KEY].access):
        return web.json_response(public)  # no versions, pid or load to strangers
    return web.json_response(
        {
            **public,
            "version": __version__,
            "worker": request.app.get(WORKER_KEY, 0),
            "pid": os.getpid(),
            "device": engine.config.device,
            "engine": engine.status(),
            "models": catalogue(engine.generators),
        }
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[ENGINE_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _client_config(request: web.Request) -> web.Response:
    """ICE servers for the page: the configured ones, plus TURN credentials minted for this client."""
    config = request.app[CONFIG_KEY]
    ice_servers = list(config.ice_servers)
    access = config.access
    if access.turn_secret is not None and access.turn_urls:
        subject = request[ACCESS_KEY].grant.subject or "causalcast"
        username, credential = turn_credentials(access.turn_secret, subject, access.turn_ttl_s)
        ice_servers.append({"urls": list(access.turn_urls), "username": username, "credential": credential})
    return web.json_response({"ice_servers": ice_servers, "protocol": PROTOCOL_VERSION})


async def _streams(request: web.Request) -> web.Response:
    try:
        request[ACCESS_KEY].grant.check_watch()  # shared streams are listed only to those who may watch
    except AuthError as e:
        request.app[ENGINE_KEY].metrics.refusals.labels("/streams", e.reason).inc()
        return web.json_response(e.to_message(), status=e.status)
    return web.json_response({"streams": request.app[BROADCASTS_KEY].describe()})


async def _websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG_KEY]
    ws = web.WebSocketResponse(max_msg_size=config.ws.max_message_bytes, heartbeat=30.0)
    await ws.prepare(request)
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and config.ws.socket_send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.ws.socket_send_buffer_bytes)
    connection = WsConnection(
        ws,
        request.app[ENGINE_KEY],
        config.ws,
        request.app[CODEC_POOL_KEY],
        request.app[BROADCASTS_KEY],
        config.control,
        access=request[ACCESS_KEY],
    )
    request.app[CONNECTIONS_KEY].add(connection)
    try:
        await connection.run()
    finally:
        request.app[CONNECTIONS_KEY].discard(connection)
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


def run(config: ServerConfig, worker: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when it is installed.

    ``worker``: this process's index among several sharing the port (:mod:`streaming.workers`).
    """
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    app = create_app(config)
    app[WORKER_KEY] = worker or 0
    url = f"http://{config.host}:{config.port}/"

    def announce(_: str) -> None:
        names = ", ".join(parse_model_spec(m)[0] for m in config.models)
        who = "" if worker is None else f" (worker {worker})"
        print(f"causalcast {__version__}: serving {names} on {config.engine.device} at {url}{who}", flush=True)

    web.run_app(
        app,
        host=config.host,
        port=config.port,
        loop=loop,
        print=announce,
        shutdown_timeout=config.shutdown_timeout_s,
        access_log=None,
        reuse_port=worker is not None,
        **runner_options(config),
    )
