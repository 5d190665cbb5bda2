"""Who may use the server, for what: signed expiring tokens, the origin allowlist, TURN credentials.

Pure (no sockets, no aiohttp): the server's middleware (:mod:`streaming.server`) turns a request into an
:class:`Access`, and the engine and the broadcast hub check it where sessions start and viewers attach.
The threat model and how to deploy with tokens: docs/security.md.

A token is ``cc1.<payload>.<signature>``: the payload is base64url JSON (expiry, subject, the models it may
start, whether it may share and watch, how many sessions it may hold at once), the signature HMAC-SHA256
of ``cc1.<payload>`` under the server's secret. Nothing is stored server-side; a token is valid until it
expires (keep lifetimes short; rotate the secret to revoke everything).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from models.errors import AuthError, CapacityError

TOKEN_VERSION = "cc1"
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class Grant:
    """What a request may do."""

    models: frozenset[str] | None = None  # models it may start (None: every one; empty: none)
    share: bool = True  # may let viewers watch its sessions
    watch: bool = True  # may list and watch shared sessions
    max_sessions: int | None = None  # sessions it may hold at once (None: only the server's limits)
    subject: str = ""  # who the token was minted for (logs, accounting)
    token_id: str = ""  # the token's own id ("" without a token)
    expires_at: float | None = None  # unix seconds

    def check_start(self, model: str, share: bool) -> None:
        """Raise :class:`AuthError` (403) unless this grant may start ``model`` (and share it)."""
        if self.models is not None and model not in self.models:
            raise AuthError(f"this token may not start '{model}' sessions", "scope", 403)
        if share and not self.share:
            raise AuthError("this token may not share sessions", "scope", 403)

    def check_watch(self) -> None:
        """Raise :class:`AuthError` (403) unless this grant may list and watch shared sessions."""
        if not self.watch:
            raise AuthError("this token may not watch shared sessions", "scope", 403)


OPEN_GRANT = Grant()  # a server without auth: everything, within the server's limits


@dataclass(frozen=True)
class Access:
    """One client's identity (for per-client limits) and grant."""

    client: str  # "token:<id>" with a token, else "ip:<address>"
    grant: Grant = OPEN_GRANT
    authenticated: bool = False  # a valid token was presented
    max_sessions: int | None = None  # the effective per-client session cap (grant's, else the server's)
    max_pending_offers: int | None = None  # WebRTC offers answered but not yet connected, at once
    max_offers_per_min: float | None = None  # WebRTC offers it may post a minute (answered or not)


# -- tokens -------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed_part: str) -> str:
    return _b64(hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest())


def check_secret(secret: bytes) -> bytes:
    """The secret itself, or ValueError when it is too short to sign with."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the auth secret must be at least {MIN_SECRET_BYTES} bytes (got {len(secret)})")
    return secret


def mint_token(
    secret: bytes,
    *,
    ttl_s: float,
    models: Iterable[str] | None = None,
    share: bool = False,
    watch: bool = False,
    max_sessions: int | None = None,
    subject: str = "",
    now: float | None = None,
) -> str:
    """A signed token valid for ``ttl_s`` seconds; ``models`` None allows every model."""
    if ttl_s <= 0:
        raise ValueError("a token's lifetime must be positive")
    if max_sessions is not None and max_sessions < 0:
        raise ValueError("max_sessions must be >= 0")
    now = time.time() if now is None else now
    payload: dict[str, Any] = {
        "jti": secrets.token_hex(8),
        "sub": subject,
        "iat": int(now),
        "exp": int(now + ttl_s),
        "models": "*" if models is None else sorted(set(models)),
        "share": share,
        "watch": watch,
        "max_sessions": max_sessions,
    }
    body = f"{TOKEN_VERSION}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
    return f"{body}.{_sign(check_secret(secret), body)}"


def verify_token(secret: bytes, token: str, now: float | None = None) -> Grant:
    """The grant a token carries; raises :class:`AuthError` (401) when it is malformed, forged or expired."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION or len(token) > 4096:
        raise AuthError("malformed token", "bad_token")
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(secret, body), parts[2]):
        raise AuthError("token signature does not match (wrong server or altered token)", "bad_token")
    try:
        payload = json.loads(_unb64(parts[1]))
        expires_at = float(payload["exp"])
        models = payload["models"]
        grant = Grant(
            models=None if models == "*" else frozenset(str(m) for m in models),
            share=bool(payload["share"]),
            watch=bool(payload["watch"]),
            max_sessions=None if payload["max_sessions"] is None else int(payload["max_sessions"]),
            subject=str(payload.get("sub", "")),
            token_id=str(payload["jti"]),
            expires_at=expires_at,
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as e:  # signed by us, so only a version skew
        raise AuthError("token payload is not understood", "bad_token") from e
    if (time.time() if now is None else now) >= expires_at:
        raise AuthError("token expired", "expired")
    return grant


# -- origins ------------------------------------------------------------------------------------------
def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a browser page at ``origin`` may open sessions here.

    No ``Origin`` header: not a browser page (a script, the Python client): allowed, tokens protect. A
    page on the server's own origin (the Origin's host:port equals the Host header) is allowed; any other
    origin must be listed in ``allowed`` (exactly, e.g. ``https://app.example.org``; ``*`` allows every
    origin).
    """
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    if origin == "null":  # sandboxed frames, file:// pages
        return False
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


# -- TURN ---------------------------------------------------------------------------------------------
def turn_credentials(secret: bytes, subject: str, ttl_s: float, now: float | None = None) -> tuple[str, str]:
    """Time-limited TURN credentials (the TURN REST scheme; coturn's ``use-auth-secret``).

    username ``<expiry unix time>:<subject>``, password base64(HMAC-SHA1(secret, username)): coturn checks
    both with the shared secret and refuses the username once its time has passed.
    """
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{subject or 'causalcast'}"
    credential = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode("ascii")
    return username, credential


# -- per-client session counts ------------------------------------------------------------------------
class ClientSessions:
    """Sessions held per client (token or address), against each client's cap."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._held: dict[str, str] = {}  # session id -> client

    def hold(self, session_id: str, access: Access) -> None:
        """Count a session against its client; raises :class:`CapacityError` (``client_sessions``) at the cap."""
        cap = access.max_sessions
        if cap is not None and self._counts[access.client] >= cap:
            raise CapacityError(
                f"this client already holds {self._counts[access.client]} sessions (its limit is {cap})",
                "client_sessions",
            )
        self._counts[access.client] += 1
        self._held[session_id] = access.client

    def release(self, session_id: str) -> None:
        """Uncount a session (unknown ids are ignored, so releasing twice is harmless)."""
        client = self._held.pop(session_id, None)
        if client is not None:
            self._counts[client] -= 1
            if not self._counts[client]:
                del self._counts[client]

    def count(self, client: str) -> int:
        """Sessions ``client`` holds now."""
        return self._counts[client]


# -- server settings ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccessConfig:
    """Access settings of a server (``causalcast serve --auth-secret-file ...``)."""

    secret: bytes | None = None  # signs tokens; set, every session, viewer and listing needs a token
    no_auth: bool = False  # serve a non-loopback address without tokens, on purpose
    allowed_origins: tuple[str, ...] = ()  # other origins whose pages may connect (and get CORS headers)
    # Sessions one client may hold at once: per token (unless the token sets its own) or per address
    # (loopback addresses without a token are exempt: tests, benches and a local page).
    max_sessions_per_client: int | None = 8
    max_pending_offers_per_client: int | None = 4  # answered WebRTC offers not yet connected (same exemption)
    # WebRTC offers one client may post a minute, in bursts of up to 10 (same exemption): answering
    # one is ~4 ms of event-loop work (SDP, transports, ICE), so a client posting them in a loop is refused.
    max_offers_per_client_per_min: float | None = 30.0
    turn_secret: bytes | None = None  # coturn's static-auth-secret: /config mints TURN credentials with it
    turn_urls: tuple[str, ...] = ()  # turn:/turns: URLs the minted credentials are for
    turn_ttl_s: float = 3600.0  # how long minted TURN credentials stay valid

    @property
    def required(self) -> bool:
        """True when requests need a token."""
        return self.secret is not None


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_access_config(config: AccessConfig, bind_host: str) -> None:
    """Refuse (ValueError) to serve a non-loopback address with nobody checked, unless told to."""
    if config.secret is not None:
        check_secret(config.secret)
        return
    if not is_loopback(bind_host) and not config.no_auth:
        raise ValueError(
            f"serving {bind_host or 'every address'} needs tokens: give --auth-secret-file (then mint tokens "
            "with `causalcast token`), or pass --no-auth to serve without them on purpose"
        )


def resolve_access(config: AccessConfig, token: str | None, remote: str | None) -> Access:
    """The :class:`Access` of a request from ``remote`` presenting ``token``; raises :class:`AuthError`.

    Without a configured secret a token is not needed and any token is ignored; with one, the token must
    verify (a request with none gets ``no_token`` where one is needed: the caller decides where).
    """
    if config.secret is not None and token:
        grant = verify_token(config.secret, token)
        cap = grant.max_sessions if grant.max_sessions is not None else config.max_sessions_per_client
        return Access(f"token:{grant.token_id}", grant, True, cap, config.max_pending_offers_per_client,
                      config.max_offers_per_client_per_min)
    if config.secret is not None:
        # No token: nothing may be started or watched (the middleware refuses protected routes earlier).
        return Access(f"ip:{remote}", Grant(models=frozenset(), share=False, watch=False), max_sessions=0)
    if is_loopback(remote):
        return Access(f"ip:{remote}", OPEN_GRANT)
    return Access(f"ip:{remote}", OPEN_GRANT, False, config.max_sessions_per_client,
                  config.max_pending_offers_per_client, config.max_offers_per_client_per_min)
