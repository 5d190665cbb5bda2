"""One Serve replica = one causalcast server: its engine on one device, its models, its admission control.

The replica runs the ordinary aiohttp application (:func:`streaming.server.create_app`, configured with the
same options as ``causalcast serve``) on its node's address, on the replica's own event loop. Clients never
address it directly: the ingress relays a WebSocket to its ``/ws`` (so a socket's bytes reach the engine
that holds its session) and hands it WebRTC offers through :meth:`EngineReplica.offer`. The answer carries
ICE candidates on this node's address, so WebRTC media flows between the browser (or a TURN relay) and
this process, never through Serve's proxy.

What Serve sees of it: the admission state in :meth:`record_routing_stats` (read by
:class:`~streaming.ray_serve.router.SessionRouter`), the session count in :meth:`record_autoscaling_stats`
(read by :class:`~streaming.ray_serve.autoscale.SessionsPolicy`), the static URLs in
:meth:`record_replica_metadata`, and a destructor that drains: when Serve stops the replica (scale-down,
rolling update) it takes no new session and waits for its running ones to end (up to ``drain_timeout_s``;
Serve's ``graceful_shutdown_timeout_s`` must be at least as long, or Serve kills it first).

Calls return plain dicts (an ``error`` message where the single server would send one), never raise
across Ray, so the ingress forwards exactly what a client of one server would get.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import time
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import ray
from aiohttp import web
from ray import serve

from models.errors import CausalcastError, ProtocolError
from streaming.cli import build_parser, server_config
from streaming.server import BROADCASTS_KEY, ENGINE_KEY, ServerConfig, create_app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaSettings:
    """How each engine replica runs its server (plain data: Serve pickles it to every replica)."""

    serve_args: tuple[str, ...] = ()  # `causalcast serve` options: --models, --device, limits, ICE, ...
    bind_host: str | None = None  # where the replica's server listens (None: the node's address, as Ray has it)
    port: int = 0  # 0: any free port (the ingress learns it from the replica's metadata)
    # Host candidates for WebRTC when the options name none: the address the server listens on (the node's),
    # so media reaches this process directly (a TURN server in ICE_SERVERS covers nodes browsers cannot reach).
    ice_on_node_address: bool = True
    drain_timeout_s: float = 600.0  # how long a stopping replica waits for its sessions to end
    torch_threads: int = 0  # 0: torch's default

    @classmethod
    def from_command_line(cls, serve_args: str | list[str] | tuple[str, ...], **kwargs: Any) -> ReplicaSettings:
        """Settings from ``causalcast serve`` options given as one string (as in a Serve config file) or a list."""
        args = tuple(shlex.split(serve_args)) if isinstance(serve_args, str) else tuple(serve_args)
        parse_serve_args(args)  # fail here, in the builder, not in every replica
        return cls(serve_args=args, **kwargs)


def parse_serve_args(serve_args: tuple[str, ...]) -> tuple[argparse.Namespace, ServerConfig]:
    """Parse ``causalcast serve`` options into (namespace, config); raises ValueError when they are bad."""
    try:
        args = build_parser().parse_args(["serve", *serve_args])
    except SystemExit as e:  # argparse reports and exits; a replica must not
        raise ValueError(f"bad causalcast serve options: {' '.join(serve_args)}") from e
    return args, server_config(args)


class EngineReplica:
    """The Serve deployment class of an engine replica (wrapped by ``serve.deployment`` in :mod:`app`)."""

    async def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.node_ip = _node_address()
        args, config = parse_serve_args(settings.serve_args)
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        host = settings.bind_host or self.node_ip
        advertised = self.node_ip if host in ("0.0.0.0", "::") else host
        if settings.ice_on_node_address and config.webrtc.host_addresses is None:
            config = replace(config, webrtc=replace(config.webrtc, host_addresses=(advertised,)))
        config = replace(config, host=host, port=settings.port)
        self.app = create_app(config)  # loads the models (this replica's device)
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                    shutdown_timeout=config.shutdown_timeout_s)
        await self.runner.setup()  # starts the engine: models warm up, step costs calibrate
        site = web.TCPSite(self.runner, host, settings.port)
        await site.start()
        port = self.runner.addresses[0][1]
        self.http_url = f"http://{_host_for_url(advertised)}:{port}"
        self.ws_url = f"ws://{_host_for_url(advertised)}:{port}/ws"
        self.http = aiohttp.ClientSession()
        self.engine = self.app[ENGINE_KEY]
        log.info("engine replica %s serving %s at %s", self.replica_id, sorted(self.engine.generators), self.http_url)

    # -- what Serve reads ------------------------------------------------------------------------------
    async def record_routing_stats(self) -> dict[str, Any]:
        """Admission state for the request router (taken on this replica's loop, every stats period)."""
        room = {}
        for model in self.engine.generators:
            try:
                await self.engine.check_admission(model, probe=False)
                room[model] = None
            except CausalcastError as e:
                room[model] = str(e)
        status = self.engine.status()
        return {
            "t": time.time(),
            "draining": self.engine.draining,
            "models": sorted(self.engine.generators),
            "sessions_per_model": status["sessions_per_model"],
            "room": room,
            "utilization": status["utilization"],
            "loop_busy": status["event_loop"]["busy"],
            "shared": [s["session"] for s in self.app[BROADCASTS_KEY].describe()],
        }

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Sessions held now, for :class:`~streaming.ray_serve.autoscale.SessionsPolicy`."""
        return {"sessions": float(self._num_sessions()), "draining": float(self.engine.draining)}

    def record_replica_metadata(self) -> dict[str, Any]:
        """Static facts routers hand to the ingress with a chosen replica."""
        return {"ws_url": self.ws_url, "http_url": self.http_url, "node_ip": self.node_ip}

    # -- calls from the ingress ------------------------------------------------------------------------
    def _gone(self, route: dict[str, Any] | None) -> dict[str, Any] | None:
        """The error to answer when a call pinned to another replica reached this one (that one is gone)."""
        pinned = (route or {}).get("replica")
        if pinned is not None and pinned != self.replica_id:
            return ProtocolError(f"replica {pinned} is gone", "replica_gone").to_message()
        return None

    def _placement(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "ws_url": self.ws_url}

    def _num_sessions(self) -> int:
        return sum(self.engine.sessions_per_model().values())

    async def placement(self, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """Where to relay a socket that has not asked for a model yet (its first message is not `start`)."""
        return {"error": gone} if (gone := self._gone(route)) is not None else self._placement()

    async def admit(self, model: str, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """Would this replica take a ``model`` session now? Its placement, or the ``error`` message why not."""
        if (gone := self._gone(route)) is not None:
            return {"error": gone}
        try:
            await self.engine.check_admission(model)
        except CausalcastError as e:
            return {"error": e.to_message(), "replica": self.replica_id}
        return self._placement()

    async def locate(self, session_id: str, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """Where to relay a viewer: this replica, if it holds the shared session ``session_id``, else an ``error``."""
        if (gone := self._gone(route)) is not None:
            return {"error": gone}
        try:
            self.app[BROADCASTS_KEY].shared_session(session_id)
        except CausalcastError as e:
            return {"error": e.to_message()}
        return self._placement()

    async def offer(
        self, body: bytes, headers: dict[str, str] | None = None, route: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Answer a WebRTC offer as this replica's own ``POST /offer`` does: ``{"status", "body"}``."""
        if (gone := self._gone(route)) is not None:
            return {"status": 409, "body": gone}
        forwarded = {k: v for k, v in (headers or {}).items() if k.lower() in FORWARDED_HEADERS}
        forwarded["Content-Type"] = "application/json"
        async with self.http.post(f"{self.http_url}/offer", data=body, headers=forwarded) as response:
            payload = await response.json(content_type=None)
            if response.status == 200 and isinstance(payload, dict):
                payload["replica"] = self.replica_id
            return {"status": response.status, "body": payload, "replica": self.replica_id}

    async def describe(self, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``/healthz`` body of this replica plus its identity, for the ingress's aggregate."""
        async with self.http.get(f"{self.http_url}/healthz") as response:
            health = await response.json()
        health.pop("worker", None)
        return {"replica": self.replica_id, "node_ip": self.node_ip, "url": self.http_url, **health}

    async def metrics(self, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """Prometheus text of this replica, labelled by the ingress."""
        return {"replica": self.replica_id, "text": self.engine.metrics.render().decode()}

    async def streams(self, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """Shared sessions here (``GET /streams``)."""
        return {"replica": self.replica_id, "streams": self.app[BROADCASTS_KEY].describe()}

    async def client_config(self, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``GET /config`` answers (ICE servers for browsers, the protocol version)."""
        async with self.http.get(f"{self.http_url}/config") as response:
            return await response.json()

    async def drain(self, draining: bool = True, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """Stop (or resume) taking new sessions; running sessions continue. Returns the replica's state."""
        if (gone := self._gone(route)) is not None:
            return {"error": gone}
        self.engine.set_draining(draining)
        log.info("replica %s %s", self.replica_id, "draining" if draining else "taking sessions again")
        return {"replica": self.replica_id, "draining": draining, "sessions": self._num_sessions()}

    # -- shutdown --------------------------------------------------------------------------------------
    async def __del__(self) -> None:
        """Serve stops this replica: drain (new sessions refused), wait for the running ones, then close."""
        self.engine.set_draining(True)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        # Polls the count the engine keeps (sessions end on their clients' own time; there is no event).
        while self._num_sessions() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        if self._num_sessions():
            log.warning("replica %s stops with %d sessions after %.0f s of draining", self.replica_id,
                        self._num_sessions(), self.settings.drain_timeout_s)
        with contextlib.suppress(Exception):
            await self.http.close()
        await self.runner.cleanup()  # the server's own shutdown: clients get `shutdown`, engine stops


# Request headers an offer carries to the replica's server (credentials a deployment may check there).
FORWARDED_HEADERS = frozenset({"authorization", "cookie"})


def _node_address() -> str:
    """The address of this node as the Ray cluster knows it (what other nodes and the ingress reach it by)."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return node["NodeManagerAddress"]
    return ray.util.get_node_ip_address()


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
