"""The ingress's half of a client WebSocket: relay it to the engine replica that holds its session.

A client speaks the ordinary protocol (docs/protocol.md) to the ingress. The relay opens a WebSocket of its
own to the chosen replica's server and copies frames both ways unchanged, so the replica's transport
(streaming/transports/ws.py) serves the session exactly as a single server would. Routing happens only
at the edges of a session: a `start` (or `watch`) while no session runs asks the :class:`Placer` where to
go (a replica with room for the model; the producer's replica for a viewer) and moves the upstream socket
there if it differs. While a session or watch runs, every frame goes to that one replica (the socket is
pinned to it); other messages go to the current replica, or to any replica before the first `start`.

To know the edges the relay reads the type of each control message (text frames; media passes as bytes):
`ready`/`watching` open a session, `stopped`/`stream_ended`/a fatal `error` end it. It adds ``replica`` to
`ready` and `watching`. If the replica's socket drops while a session runs (the replica died), the client
gets a fatal ``replica_lost`` error and keeps its socket: its next `start` is placed on a live replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from starlette.websockets import WebSocket, WebSocketDisconnect

from models.errors import CausalcastError

log = logging.getLogger(__name__)


class PlacementError(Exception):
    """A placement failed; carries the `error` message the client gets (as a single server would send it)."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.message = message

    @classmethod
    def of(cls, error: CausalcastError) -> PlacementError:
        """From one of our exceptions."""
        return cls(error.to_message())


@dataclass(frozen=True)
class Placement:
    """A replica a socket is relayed to."""

    replica_id: str
    ws_url: str


class Placer(Protocol):
    """How the relay asks Serve where to go (implemented by the ingress over a deployment handle)."""

    async def place(self, model: str) -> Placement:
        """A replica with room for a new ``model`` session; raises PlacementError (e.g. ``capacity``)."""

    async def locate(self, session_id: str) -> Placement:
        """The replica holding shared session ``session_id``; raises PlacementError (``unknown_session``)."""

    async def any(self) -> Placement:
        """Some live replica (for messages before any `start`)."""


SESSION_OPENED = frozenset({"ready", "watching"})
SESSION_ENDED = frozenset({"stopped", "stream_ended"})


class SocketRelay:
    """Relays one client WebSocket (Starlette, at the ingress) to engine replicas' WebSockets."""

    def __init__(
        self,
        client: WebSocket,
        placer: Placer,
        http: aiohttp.ClientSession,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.placer = placer
        self.http = http
        self.query = query
        self.headers = headers or {}
        self.max_message_bytes = max_message_bytes
        self.busy = False  # a session or a watch runs on the current replica
        self.placement: Placement | None = None
        self._lost = False  # the replica of a running session vanished; its late media is dropped until `start`
        self._upstream: aiohttp.ClientWebSocketResponse | None = None
        self._pump: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()  # the pump and error replies both write to the client

    async def run(self) -> None:
        """Relay until the client goes away."""
        try:
            while True:
                message = await self.client.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await self._on_text(message["text"])
                elif message.get("bytes") is not None and not self._lost:
                    await self._forward(message["bytes"])
        except WebSocketDisconnect:
            pass
        finally:
            await self._disconnect_upstream()

    async def shutdown(self, message: dict[str, Any]) -> None:
        """The ingress stops: tell the client, close both sockets."""
        await self._send_client(json.dumps(message))
        await self._disconnect_upstream()
        with contextlib.suppress(Exception):
            await self.client.close(code=1001)

    # -- client -> replica -----------------------------------------------------------------------------
    async def _on_text(self, text: str) -> None:
        message = _parse(text)
        kind = message.get("type") if message else None
        target = message.get("model" if kind == "start" else "session") if message else None
        if not self.busy and kind in ("start", "watch") and isinstance(target, str):
            # (a malformed start or watch goes wherever the socket is: that replica explains what is wrong)
            try:
                if kind == "start":
                    placement = await self.placer.place(target)
                else:
                    placement = await self.placer.locate(target)
            except PlacementError as e:
                await self._send_client(json.dumps(e.message))
                return
            await self._connect(placement)
            self._lost = False
        await self._forward(text)

    async def _forward(self, data: str | bytes) -> None:
        if self._upstream is None or self._upstream.closed:
            try:
                await self._connect(await self.placer.any())
            except PlacementError as e:
                await self._send_client(json.dumps(e.message))
                return
        upstream = self._upstream
        assert upstream is not None
        try:
            if isinstance(data, str):
                await upstream.send_str(data)
            else:
                await upstream.send_bytes(data)
        except (ConnectionError, RuntimeError) as e:  # the replica vanished mid-send: the pump reports it
            log.debug("relay to %s failed: %s", self.placement, e)

    async def _connect(self, placement: Placement) -> None:
        """Point the upstream socket at ``placement`` (no-op when it already is)."""
        if self._upstream is not None and not self._upstream.closed and placement == self.placement:
            return
        await self._disconnect_upstream()
        url = placement.ws_url + (f"?{self.query}" if self.query else "")
        try:
            upstream = await self.http.ws_connect(url, headers=self.headers, max_msg_size=self.max_message_bytes)
        except (aiohttp.ClientError, OSError) as e:
            raise PlacementError(
                {"type": "error", "code": "replica_lost", "fatal": True,
                 "message": f"could not reach replica {placement.replica_id}: {e}"}
            ) from e
        self._upstream, self.placement, self.busy = upstream, placement, False
        self._pump = asyncio.create_task(self._pump_replica(upstream, placement), name=f"relay-{placement.replica_id}")

    async def _disconnect_upstream(self) -> None:
        upstream, pump = self._upstream, self._pump
        self._upstream, self._pump, self.busy = None, None, False
        if upstream is not None:
            with contextlib.suppress(Exception):
                await upstream.close()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    # -- replica -> client -----------------------------------------------------------------------------
    async def _pump_replica(self, upstream: aiohttp.ClientWebSocketResponse, placement: Placement) -> None:
        """Copy the replica's frames to the client, watching session edges; report a replica that vanished."""
        async for msg in upstream:
            if msg.type is aiohttp.WSMsgType.BINARY:
                await self._send_client(msg.data)
            elif msg.type is aiohttp.WSMsgType.TEXT:
                await self._send_client(self._on_replica_text(msg.data, placement))
            else:
                break
        if upstream is self._upstream:  # not replaced or closed by us: the replica's side ended
            lost = self.busy
            self._upstream, self.busy = None, False
            if lost:
                self._lost = True
                log.warning("replica %s dropped a running session's socket", placement.replica_id)
                await self._send_client(json.dumps({
                    "type": "error", "code": "replica_lost", "fatal": True,
                    "message": f"the replica serving this session ({placement.replica_id}) failed; "
                               "send 'start' again to be placed on another one",
                }))

    def _on_replica_text(self, text: str, placement: Placement) -> str:
        message = _parse(text)
        kind = message.get("type") if message else None
        if kind in SESSION_OPENED:
            self.busy = True
            message["replica"] = placement.replica_id
            return json.dumps(message)
        if kind in SESSION_ENDED or (kind == "error" and message.get("fatal")):
            self.busy = False
        return text

    async def _send_client(self, data: str | bytes) -> None:
        async with self._send_lock:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, ConnectionError):
                if isinstance(data, str):
                    await self.client.send_text(data)
                else:
                    await self.client.send_bytes(data)


def _parse(text: str) -> dict[str, Any] | None:
    """The JSON object of a control message, or None (the replica answers malformed ones itself)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
