"""WebRTC transport (aiortc): signalling and the registry of peers, over the same Session and Engine as the WebSocket.

Signalling is one HTTP exchange, non-trickle ICE as in aiortc's examples: ``POST /offer`` with
``{"sdp", "type": "offer", "model", "params", "share"}`` is answered by ``{"sdp", "type": "answer",
"session"}``, or by HTTP 400 (bad offer, bad parameters) / 503 (at capacity) with an ``error`` message as
body. An offer with ``"watch": SESSION_ID`` instead of a model makes a receive-only viewer of a shared
session. Refused offers are logged with their reason.

An offer may carry ``"offer_id"`` (the client's random id for it, 8-64 letters, digits, ``-`` or ``_``):
``DELETE /offer/{offer_id}`` then drops that offer's peer at once, whether its answer is still being built
or already sent (a person pressed Stop while starting), instead of leaving the session waiting for its
connect timeout.

:class:`RtcHub` reads and checks the offer body, plans ICE (which host addresses to gather from), builds
the peer connection and hands the offer to the peer kind it asks for; it is the only module that knows
both kinds. Imports point one way: this module -> :mod:`~streaming.transports.webrtc_session` (a session
per offer with a model) and :mod:`~streaming.transports.webrtc_viewer` (a viewer per offer with
``watch``) -> :mod:`~streaming.transports.webrtc_peer` (what every peer has) ->
:mod:`~streaming.transports.rtc_support` (our adjustments to aiortc).

The control data channel opened by the client carries the WebSocket protocol's JSON messages (``ping``,
``stop``, ``request_keyframe`` and the model's events) and brings back ``ready``, ``stats``, ``error``,
``stopped`` and the model's notices.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from models.errors import AuthError, CapacityError, CausalcastError, ProtocolError, ShutdownError
from streaming.auth import Access
from streaming.broadcast import BroadcastHub
from streaming.engine.core import Engine
from streaming.guard import ACCESS_KEY
from streaming.protocol import load_json
from streaming.transports import rtc_support
from streaming.transports.control import ControlLimits, TokenBucket
from streaming.transports.webrtc_peer import RtcConfig, RtcPeerBase, check_sdp_size, inspect_offer
from streaming.transports.webrtc_session import answer_session
from streaming.transports.webrtc_viewer import answer_watch

__all__ = ["RtcConfig", "RtcHub", "inspect_offer"]

log = logging.getLogger(__name__)

OFFER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_CANCELLED_OFFERS = 1024  # cancellations remembered for offers whose answer is still being built
OFFER_BURST = 10  # offers a client may post at once (a page opening a few sessions), within its rate
MAX_RATE_CLIENTS = 10_000  # clients whose offer budgets are remembered; full budgets are forgotten first


class OfferRates:
    """Each client's budget of offers (``Access.max_offers_per_min``), refilled continuously."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, access: Access | None) -> float:
        """Count one offer of this client; returns 0, or the seconds until it may post one (refused)."""
        if access is None or access.max_offers_per_min is None:
            return 0.0
        bucket = self._buckets.get(access.client)
        if bucket is None:
            if len(self._buckets) >= MAX_RATE_CLIENTS:
                self._forget_full()
            rate_per_s = access.max_offers_per_min / 60.0
            capacity = max(1.0, min(float(OFFER_BURST), access.max_offers_per_min))
            bucket = self._buckets[access.client] = TokenBucket(rate_per_s, capacity, self._clock)
        wait_s = bucket.delay(1.0)
        if wait_s == 0.0:
            bucket.take(1.0)
        return wait_s

    def _forget_full(self) -> None:
        for client in [c for c, b in self._buckets.items() if b.delay(b.capacity) == 0.0]:
            del self._buckets[client]


class RtcHub:
    """All WebRTC peers of one server: answers offers, closes everything on shutdown."""

    def __init__(
        self,
        engine: Engine,
        config: RtcConfig,
        *,
        ice_servers: tuple[dict[str, Any], ...],
        broadcasts: BroadcastHub | None = None,
        control: ControlLimits | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.control = control or ControlLimits()  # what each peer's client may send
        self.broadcasts = broadcasts  # shared sessions: producers may `share`, viewers `watch`
        self.peers: set[RtcPeerBase] = set()
        self.ice_servers = config.ice_servers if config.ice_servers is not None else ice_servers
        self._shutting_down = False
        self._offers: dict[str, RtcPeerBase] = {}  # offer_id -> its peer, while the peer lives
        self._offer_ids: dict[RtcPeerBase, str] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()  # cancelled before their answer was ready
        self._pending: dict[RtcPeerBase, str] = {}  # answered, not yet connected peers -> their client
        self._rates = OfferRates()

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` began: offers are refused."""
        return self._shutting_down

    def ice_plan(self, sdp: str) -> tuple[tuple[str, ...] | None, bool]:
        """Host addresses to gather from for this offer, and whether the peer is confined to loopback.

        An offer with a 127.0.0.1 candidate (tests, the bench, a browser started with
        --allow-loopback-in-peer-connection) is answered over loopback only; any other offer (a browser as
        people run it) gets aioice's usual host candidates, unless the server is configured loopback-only.
        """
        if self.config.host_addresses is not None:
            addresses = self.config.host_addresses
            return addresses, all(rtc_support.is_loopback(a) for a in addresses)
        if rtc_support.has_loopback_candidate(sdp):
            return ("127.0.0.1",), True
        if self.config.loopback_only:
            raise ProtocolError(
                "this server only connects over loopback (127.0.0.1) and the offer has no loopback candidate; "
                "a browser needs --allow-loopback-in-peer-connection",
                "bad_offer",
            )
        return None, False

    def new_connection(self, offer_sdp: str) -> tuple[RTCPeerConnection, str, tuple[str, ...] | None]:
        """A peer connection for an offer: ``(pc, the offer's SDP as the server will apply it, host addresses)``."""
        host_addresses, loopback_only = self.ice_plan(offer_sdp)
        sdp = rtc_support.filter_candidates(offer_sdp, loopback_only=loopback_only)
        if loopback_only and rtc_support.count_candidates(offer_sdp) and not rtc_support.count_candidates(sdp):
            raise ProtocolError(
                "this server gathers only loopback candidates and the offer has none; a browser needs "
                "--allow-loopback-in-peer-connection, or set the server's ICE host addresses",
                "bad_offer",
            )
        # A loopback peer never asks anyone outside the machine for candidates.
        ice_servers = () if loopback_only else self.ice_servers
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers]))
        return pc, sdp, host_addresses

    def discard(self, peer: RtcPeerBase) -> None:
        """Forget a closed peer."""
        self.peers.discard(peer)
        offer_id = self._offer_ids.pop(peer, None)
        if offer_id is not None:
            self._offers.pop(offer_id, None)
        self._pending.pop(peer, None)

    def _check_pending(self, access: Access | None) -> None:
        """Refuse a client's offer while it has too many answered offers that have not connected.

        An answered offer holds no session slot (its session is admitted when ICE/DTLS connects), but it
        holds a peer connection and its ports until then or until the connect timeout ends it.
        """
        for peer in [p for p in self._pending if p.pc.connectionState == "connected" or p not in self.peers]:
            del self._pending[peer]
        if access is None or access.max_pending_offers is None:
            return
        pending = sum(1 for client in self._pending.values() if client == access.client)
        if pending >= access.max_pending_offers:
            raise CapacityError(
                f"this client has {pending} answered offers that have not connected yet (its limit is "
                f"{access.max_pending_offers}); connect or close them first",
                "client_pending_offers",
            )

    async def handle_offer(self, request: web.Request) -> web.Response:
        """``POST /offer``: answer an SDP offer with a session (or a viewer), or explain why not."""
        access = request.get(ACCESS_KEY)  # set by the server's gate (streaming/guard.py)
        wait_s = self._rates.take(access)
        if wait_s > 0.0:  # refused before the body is read or anything is parsed
            error = ProtocolError(
                f"this client posts offers faster than its limit ({access.max_offers_per_min:g} a minute); "
                f"retry in {wait_s:.1f} s",
                "rate_limited",
            )
            self.engine.metrics.refusals.labels("/offer", "client_offer_rate").inc()
            response = _refused(request, error, 429)
            response.headers["Retry-After"] = str(math.ceil(wait_s))
            return response
        try:
            self._check_pending(access)
            body = await self._read_offer(request)
            if "watch" in body:
                answer, peer = await answer_watch(self, body, access)
            else:
                answer, peer = await answer_session(self, body, access)
            if access is not None:
                self._pending[peer] = access.client
        except AuthError as e:
            self.engine.metrics.refusals.labels("/offer", e.reason).inc()
            return _refused(request, e, e.status)
        except (CapacityError, ShutdownError) as e:
            if isinstance(e, CapacityError) and e.reason == "client_pending_offers":
                self.engine.metrics.refusals.labels("/offer", e.reason).inc()
            return _refused(request, e, 503)
        except CausalcastError as e:
            self.engine.metrics.errors.labels(e.code).inc()
            if e.code == "body_timeout":  # no keep-alive: aiohttp lingers briefly (runner_options), then closes
                self.engine.metrics.refusals.labels("/offer", e.code).inc()
                response = _refused(request, e, 408)
                response.force_close()
                return response
            return _refused(request, e, 503 if e.code == "capacity" else 400)  # e.g. a stream's viewer limit
        offer_id = body.get("offer_id")
        if offer_id is not None:
            if offer_id in self._cancelled:  # the client gave up while the answer was being built
                del self._cancelled[offer_id]
                await peer.close("cancelled by client", notify=False)
                return _refused(request, ProtocolError("the client cancelled this offer", "cancelled"), 409)
            self._offers[offer_id] = peer
            self._offer_ids[peer] = offer_id
        return web.json_response(answer)

    async def handle_cancel(self, request: web.Request) -> web.Response:
        """``DELETE /offer/{offer_id}``: drop that offer's peer now (or as soon as its answer is built)."""
        offer_id = request.match_info["offer_id"]
        if not OFFER_ID.fullmatch(offer_id):
            return _error_response(ProtocolError("offer id must be 8-64 letters, digits, '-' or '_'", "bad_offer"), 400)
        peer = self._offers.pop(offer_id, None)
        if peer is None:
            self._cancelled[offer_id] = None
            while len(self._cancelled) > MAX_CANCELLED_OFFERS:
                self._cancelled.popitem(last=False)
            return web.json_response({"cancelled": offer_id, "pending": True}, status=202)
        await peer.close("cancelled by client", notify=False)
        return web.json_response({"cancelled": offer_id, "session": getattr(peer, "id", None)})

    async def _read_offer(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.config.max_offer_bytes:
            raise ProtocolError(f"offer of {request.content_length} bytes is too large", "too_large")
        try:
            raw = await asyncio.wait_for(request.read(), self.config.offer_body_timeout_s)
        except TimeoutError as e:
            raise ProtocolError(
                f"the offer body did not arrive within {self.config.offer_body_timeout_s:g} s", "body_timeout"
            ) from e
        if len(raw) > self.config.max_offer_bytes:
            raise ProtocolError(f"offer of {len(raw)} bytes is too large", "too_large")
        body = load_json(raw, "offer body", "bad_offer")
        if not isinstance(body, dict):
            raise ProtocolError("offer body must be a JSON object", "bad_offer")
        if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            raise ProtocolError("offer body needs 'type': 'offer' and a string 'sdp'", "bad_offer")
        check_sdp_size(body["sdp"], self.config)
        offer_id = body.get("offer_id")
        if offer_id is not None and not (isinstance(offer_id, str) and OFFER_ID.fullmatch(offer_id)):
            raise ProtocolError("'offer_id' must be 8-64 letters, digits, '-' or '_'", "bad_offer")
        if "watch" in body:
            if not isinstance(body["watch"], str) or not body["watch"]:
                raise ProtocolError("'watch' must be the string id of a shared session", "bad_offer")
            return body
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise ProtocolError("offer body needs a string 'model' (or 'watch' with a shared session id)", "bad_offer")
        if not isinstance(body.get("params", {}), dict):
            raise ProtocolError("'params' must be an object", "bad_offer")
        if not isinstance(body.get("share", False), bool):
            raise ProtocolError("'share' must be true or false", "bad_offer")
        return body

    async def shutdown(self) -> None:
        """Close every peer (server shutdown), telling clients why."""
        self._shutting_down = True
        peers = list(self.peers)
        await asyncio.gather(
            *(p.close("server shutting down", ShutdownError("server shutting down")) for p in peers),
            return_exceptions=True,
        )


def _error_response(error: CausalcastError, status: int) -> web.Response:
    return web.json_response(error.to_message(), status=status)


def _refused(request: web.Request, error: CausalcastError, status: int) -> web.Response:
    """An offer refused: logged with its reason (operators see why clients could not start), then answered."""
    log.warning("offer from %s refused (HTTP %d, %s): %s", request.remote, status, error.code, error)
    return _error_response(error, status)
