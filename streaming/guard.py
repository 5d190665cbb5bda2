"""The server's HTTP gate: every request passes here before a route sees it.

One aiohttp middleware, in this order: absurd paths are refused (400) and paths the file system cannot
look up answer 404, not 500; a browser page on a foreign origin may not open a WebSocket or post an offer
(403) unless the origin is allowlisted; CORS preflights are answered for allowlisted origins only; the
request's token (``?token=`` or ``Authorization: Bearer``) is verified into an :class:`~streaming.auth.Access`
at ``request[ACCESS_KEY]``, and routes that start, list or watch sessions refuse without one (401) when the
server has a secret. Refusals are counted in ``causalcast_refusals{endpoint, reason}``.
The rules and the threat model: docs/security.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from models.errors import AuthError
from streaming.auth import Access, AccessConfig, is_loopback, origin_allowed, resolve_access
from streaming.metrics import Metrics

log = logging.getLogger(__name__)

# Routes that start, list or watch sessions, or describe the server in detail: a token is needed for them
# when the server has a secret. The page itself (/ and /web/) and /healthz's public part are open.
PROTECTED_PATHS = frozenset({"/ws", "/offer", "/streams", "/config", "/metrics"})
# Routes a foreign page could abuse through a visitor's browser (WebSocket upgrades are not subject to CORS).
ORIGIN_CHECKED_PATHS = frozenset({"/ws", "/offer"})
CORS_PATHS = frozenset({"/offer", "/config", "/streams", "/healthz"})

ACCESS_KEY = web.RequestKey("access", Access)  # each request's Access, for the routes and transports

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_token(request: web.Request) -> str | None:
    """The token a request presents: ``?token=`` (browsers cannot set WebSocket headers) or a Bearer header."""
    token = request.query.get("token")
    if token:
        return token
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def make_guard(config: AccessConfig, metrics: Metrics, max_path_chars: int) -> Any:
    """The middleware for a server with these access settings."""

    def refuse(request: web.Request, error: AuthError) -> web.Response:
        metrics.refusals.labels(request.path if request.path in PROTECTED_PATHS else "other", error.reason).inc()
        log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, error)
        return web.json_response(error.to_message(), status=error.status)

    def add_cors(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        listed = "*" in config.allowed_origins or origin in config.allowed_origins
        if origin and listed and request.path in CORS_PATHS:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if len(request.raw_path) > max_path_chars:
            raise web.HTTPBadRequest(text="request path too long\n")
        path = request.path
        origin = request.headers.get("Origin")
        if path in ORIGIN_CHECKED_PATHS and not origin_allowed(origin, request.host, config.allowed_origins):
            return refuse(request, AuthError(f"pages on {origin} may not use this server", "origin", 403))
        if request.method == "OPTIONS" and path in CORS_PATHS:  # a preflight: answered, never routed
            response = web.Response(status=204)
            add_cors(request, response)
            if "Access-Control-Allow-Origin" in response.headers:
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
                response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
                response.headers["Access-Control-Max-Age"] = "600"
            return response
        try:
            access = resolve_access(config, request_token(request), request.remote)
            if config.required and path in PROTECTED_PATHS and not access.authenticated:
                raise AuthError("this server needs a token (?token= or Authorization: Bearer)", "no_token")
        except AuthError as e:
            return refuse(request, e)
        request[ACCESS_KEY] = access
        try:
            response = await handler(request)
        except web.HTTPException as e:
            add_cors(request, e)
            raise
        except OSError as e:  # e.g. ENAMETOOLONG from a static file lookup
            if path.startswith("/web/"):
                raise web.HTTPNotFound() from e
            raise
        if not response.prepared:  # a WebSocket has sent its headers already
            add_cors(request, response)
        return response

    return guard


def detail_allowed(request: web.Request, config: AccessConfig) -> bool:
    """Whether /healthz may show versions, pid and load: to a token holder, or without auth to loopback."""
    access = request.get(ACCESS_KEY)
    if access is not None and access.authenticated:
        return True
    return not config.required and is_loopback(request.remote)
