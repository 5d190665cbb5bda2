"""The ingress deployment: the public HTTP face of a causalcast cluster on Ray Serve.

Serve's proxy hands every request to an ingress replica, which speaks the single server's HTTP API:

* ``GET /ws``: the WebSocket protocol, relayed to the engine replica of each session
  (:class:`~streaming.ray_serve.relay.SocketRelay`);
* ``POST /offer``: WebRTC signalling, answered by the chosen engine replica (its candidates are on its
  own node, so media never passes through here);
* ``GET /healthz``: every replica's health in ``replicas``, and an overall ``status``;
* ``GET /metrics``: every replica's metrics, each sample labelled ``replica="<id>"``;
* ``GET /streams``, ``GET /config``, and the web page (``/``, ``/web/``).

Where a session goes is decided by :class:`~streaming.ray_serve.router.SessionRouter` from the replicas'
reported admission state; this module only says what each call needs (the ``route`` keyword). A placement
is confirmed by the chosen replica's own admission control (:meth:`EngineReplica.admit`); a refusal moves
on to the next replica, at most ``max_place_attempts`` times, and the last refusal (the usual `capacity`
error with its reason) is what the client gets.

All state lives on the ingress instance (the handle, an HTTP session, the open relays): the ASGI app is
built per replica by ``__serve_build_asgi_app__``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from models.errors import CapacityError, ProtocolError, ShutdownError
from streaming import __version__
from streaming.protocol import PROTOCOL_VERSION
from streaming.ray_serve.relay import Placement, PlacementError, SocketRelay
from streaming.ray_serve.replica import FORWARDED_HEADERS
from streaming.server import WEB_ROOT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngressSettings:
    """Settings of the ingress deployment."""

    call_timeout_s: float = 10.0  # a call to an engine replica (placement, offer, status) must answer in this
    max_place_attempts: int = 3  # replicas tried for one new session before its refusal is final
    max_message_bytes: int = 4 * 1024 * 1024  # WebSocket frames relayed (the replicas enforce their own limit)
    max_offer_bytes: int = 256 * 1024
    web_root: str | None = str(WEB_ROOT)  # the web page; None serves none


class HandlePlacer:
    """The relay's :class:`~streaming.ray_serve.relay.Placer` over the engine deployment's handle."""

    def __init__(self, engines: DeploymentHandle, settings: IngressSettings) -> None:
        self.engines = engines
        self.settings = settings

    async def call(self, method: str, *args: Any, route: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Call one engine replica chosen by the router for ``route``."""
        response = self.engines.options(method_name=method).remote(*args, route=route or {}, **kwargs)
        try:
            return await asyncio.wait_for(_awaited(response), self.settings.call_timeout_s)
        except TimeoutError as e:
            response.cancel()
            raise PlacementError.of(
                CapacityError(f"no engine replica answered within {self.settings.call_timeout_s:g} s")
            ) from e
        except RayError as e:  # the replica died during the call (Serve retries the routing itself)
            raise PlacementError.of(CapacityError(f"no engine replica could take the call: {e}")) from e

    async def place(self, model: str) -> Placement:
        """A replica whose admission control takes a ``model`` session now (see the module docstring)."""
        refused: list[str] = []
        result: dict[str, Any] = {}
        for _ in range(self.settings.max_place_attempts):
            result = await self.call("admit", model, route={"model": model, "exclude": refused})
            if "error" not in result:
                return Placement(result["replica"], result["ws_url"])
            if result["error"].get("code") != "capacity" or result.get("replica") in refused:
                break  # not a capacity refusal (e.g. unknown_model), or the router has no one else left
            refused.append(result["replica"])
        raise PlacementError(result["error"])

    async def locate(self, session_id: str) -> Placement:
        """The producer's replica: from the routing reports, else asked of every replica."""
        result = await self.call("locate", session_id, route={"share": session_id})
        if "error" not in result:
            return Placement(result["replica"], result["ws_url"])
        for found in await self.broadcast("locate", session_id):  # the reports may predate the share
            if "error" not in found:
                return Placement(found["replica"], found["ws_url"])
        raise PlacementError(result["error"])

    async def any(self) -> Placement:
        """The least busy live replica."""
        result = await self.call("placement")
        if "error" in result:
            raise PlacementError(result["error"])
        return Placement(result["replica"], result["ws_url"])

    async def broadcast(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call every live engine replica; results of the ones that answered in time."""
        response = self.engines.broadcast(method, *args, route={}, **kwargs)
        results = await response.results_async(timeout_s=self.settings.call_timeout_s, return_exceptions=True)
        for failure in (r for r in results if isinstance(r, BaseException)):
            log.warning("an engine replica did not answer %s: %s", method, failure)
        return [r for r in results if not isinstance(r, BaseException)]


class IngressBase:
    """The ingress deployment class (wrapped by ``serve.ingress`` below and ``serve.deployment`` in :mod:`app`)."""

    def __init__(self, engines: DeploymentHandle, settings: IngressSettings | None = None) -> None:
        self.settings = settings or IngressSettings()
        self.placer = HandlePlacer(engines, self.settings)
        self.relays: set[SocketRelay] = set()
        self._http: aiohttp.ClientSession | None = None

    def __serve_build_asgi_app__(self) -> Starlette:
        """The ASGI app of this ingress replica (built per instance: no state is shared between ingress replicas)."""
        routes = [
            Route("/healthz", self.healthz),
            Route("/metrics", self.metrics),
            Route("/config", self.client_config),
            Route("/streams", self.streams),
            Route("/offer", self.offer, methods=["POST"]),
            WebSocketRoute("/ws", self.websocket),
        ]
        web_root = Path(self.settings.web_root) if self.settings.web_root else None
        if web_root is not None and web_root.is_dir():
            routes += [Route("/", self.index), Mount("/web", StaticFiles(directory=web_root))]
        return Starlette(routes=routes)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The client session of upstream sockets (made on first use, on the ingress's event loop)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def __del__(self) -> None:
        """Serve stops this ingress replica: end every relayed socket with `shutdown`, then close."""
        message = ShutdownError("this ingress is shutting down; reconnect").to_message()
        await asyncio.gather(*(relay.shutdown(message) for relay in list(self.relays)), return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # -- the protocol --------------------------------------------------------------------------------
    async def websocket(self, client: WebSocket) -> None:
        """``GET /ws``: relay the socket to the engine replica of each of its sessions."""
        await client.accept()
        headers = {k: v for k, v in client.headers.items() if k.lower() in FORWARDED_HEADERS}
        relay = SocketRelay(client, self.placer, self.http, query=client.url.query, headers=headers,
                            max_message_bytes=self.settings.max_message_bytes)
        self.relays.add(relay)
        try:
            await relay.run()
        finally:
            self.relays.discard(relay)

    async def offer(self, request: Request) -> Response:
        """``POST /offer``: a WebRTC session on a replica with room, or a viewer on its producer's replica."""
        raw = await request.body()
        if len(raw) > self.settings.max_offer_bytes:
            return _error(ProtocolError(f"offer of {len(raw)} bytes is too large", "too_large").to_message(), 400)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):  # the replica would say the same; no need to place it anywhere
            return _error(ProtocolError("offer body must be a JSON object", "bad_offer").to_message(), 400)
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        try:
            if isinstance(body.get("watch"), str):
                result = await self._offer_watch(raw, headers, body["watch"])
            else:
                result = await self._offer_session(raw, headers, str(body.get("model")))
        except PlacementError as e:
            return _error(e.message, 503 if e.message.get("code") == "capacity" else 400)
        return JSONResponse(result["body"], status_code=result["status"])

    async def _offer_session(self, raw: bytes, headers: dict[str, str], model: str) -> dict[str, Any]:
        refused: list[str] = []
        result: dict[str, Any] = {}
        for _ in range(self.settings.max_place_attempts):
            result = await self.placer.call("offer", raw, headers, route={"model": model, "exclude": refused})
            if result["status"] != 503 or result["body"].get("code") != "capacity":
                return result
            replica = result.get("replica")
            if replica is None or replica in refused:
                break
            refused.append(replica)
        return result

    async def _offer_watch(self, raw: bytes, headers: dict[str, str], session_id: str) -> dict[str, Any]:
        result = await self.placer.call("offer", raw, headers, route={"share": session_id})
        if result["body"].get("code") == "unknown_session":  # the reports may predate the share: ask everyone
            placement = await self.placer.locate(session_id)
            result = await self.placer.call("offer", raw, headers, route={"replica": placement.replica_id})
        return result

    # -- the cluster's state -------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: each engine replica's health, and ``ok`` while one of them takes sessions."""
        replicas = sorted(await self.placer.broadcast("describe"), key=lambda r: r["replica"])
        taking = [r for r in replicas if r.get("status") == "ok" and not r["engine"].get("draining")]
        body = {
            "status": "ok" if taking else "unavailable",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "sessions": sum(r["engine"]["sessions"] for r in replicas),
            "replicas": replicas,
            "models": replicas[0]["models"] if replicas else [],  # every replica is configured alike
        }
        return JSONResponse(body, status_code=200 if taking else 503)

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: every replica's samples, labelled with its id."""
        parts = await self.placer.broadcast("metrics")
        body = relabel_metrics({p["replica"]: p["text"] for p in parts})
        return Response(body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def streams(self, request: Request) -> Response:
        """``GET /streams``: the shared sessions of every replica."""
        parts = await self.placer.broadcast("streams")
        streams = [{**s, "replica": p["replica"]} for p in parts for s in p["streams"]]
        return JSONResponse({"streams": streams})

    async def client_config(self, request: Request) -> Response:
        """``GET /config``: ICE servers and protocol version (every replica has the same)."""
        try:
            return JSONResponse(await self.placer.call("client_config"))
        except PlacementError as e:
            return _error(e.message, 503)

    async def index(self, request: Request) -> Response:
        """The web page."""
        index = Path(self.settings.web_root or "") / "index.html"
        return FileResponse(index) if index.is_file() else PlainTextResponse("causalcast is running.\n")


Ingress = serve.ingress()(IngressBase)


def relabel_metrics(texts: dict[str, str]) -> bytes:
    """Merge Prometheus expositions of several replicas into one, each sample labelled ``replica``."""
    families: dict[str, Any] = {}
    samples: dict[str, list[Any]] = defaultdict(list)
    for replica_id, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)
            for sample in family.samples:
                samples[family.name].append(sample._replace(labels={**sample.labels, "replica": replica_id}))
    registry = CollectorRegistry()
    registry.register(_Families(families, samples))
    return generate_latest(registry)


class _Families:
    """A collector that yields already parsed metric families (for :func:`relabel_metrics`)."""

    def __init__(self, families: dict[str, Any], samples: dict[str, list[Any]]) -> None:
        self.families, self.samples = families, samples

    def collect(self) -> list[Any]:
        out = []
        for name, family in self.families.items():
            family.samples = self.samples[name]
            out.append(family)
        return out


async def _awaited(response: Awaitable[Any]) -> Any:
    return await response


def _error(message: dict[str, Any], status: int) -> Response:
    return JSONResponse(message, status_code=status)

