"""Command line: ``causalcast serve|weights|token ...`` (also ``python -m streaming ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from models.errors import CausalcastError
from models.registry import DEFAULT_MODELS
from streaming.auth import AccessConfig, check_access_config
from streaming.engine.core import EngineConfig
from streaming.engine.scheduler import AdmissionLimits
from streaming.server import ServerConfig, run
from streaming.session import SessionConfig
from streaming.transports.control import ControlLimits
from streaming.transports.webrtc import RtcConfig
from streaming.transports.ws import WsConfig
from streaming.workers import serve_workers


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CAUSALCAST_{name}", default)


def _optional_float(text: str) -> float | None:
    return float(text) if text else None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option also reads a CAUSALCAST_* environment variable)."""
    parser = argparse.ArgumentParser(prog="causalcast", description="Real-time streaming of causal generators.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8080")))
    serve.add_argument("--device", default=_env("DEVICE", "cpu"), help="cpu, cuda, cuda:1, ...")
    serve.add_argument(
        "--models",
        nargs="+",
        default=_env("MODELS", " ".join(DEFAULT_MODELS)).split(),
        help="models to load, each name[:key=value,...]; a published release: vc:weights=DIR (see "
        "`causalcast weights`) (default: %(default)s)",
    )
    serve.add_argument(
        "--max-utilization",
        type=float,
        default=float(_env("MAX_UTILIZATION", "0.8")),
        help="refuse sessions that would keep the device busier than this share of real time",
    )
    serve.add_argument(
        "--max-loop-busy",
        type=float,
        default=float(_env("MAX_LOOP_BUSY", "0.7")),
        help="refuse sessions whose media would need more of a core for the event loop (on CPU or waiting for "
        "one) than this share",
    )
    serve.add_argument("--max-sessions", type=int, default=int(_env("MAX_SESSIONS", "256")))
    serve.add_argument("--clock-lead-ms", type=float, default=_optional_float(_env("CLOCK_LEAD_MS", "")),
                       help="clock-paced models produce this far ahead of playout (default: each model's)")
    serve.add_argument("--late-after-ms", type=float, default=_optional_float(_env("LATE_AFTER_MS", "")),
                       help="input-paced chunks are late after this (default: each model's)")
    serve.add_argument("--max-message-bytes", type=int, default=int(_env("MAX_MESSAGE_BYTES", str(2 * 1024 * 1024))))
    limits = ControlLimits()
    serve.add_argument("--max-messages-per-s", type=float,
                       default=float(_env("MAX_MESSAGES_PER_S", str(limits.max_messages_per_s))),
                       help="messages one client connection may send a second, all types (over it: read slower)")
    serve.add_argument("--max-bytes-per-s", type=float,
                       default=float(_env("MAX_BYTES_PER_S", str(limits.max_bytes_per_s))),
                       help="bytes one client connection may send a second (over it: read slower)")
    serve.add_argument("--rate-burst-s", type=float, default=float(_env("RATE_BURST_S", str(limits.burst_s))),
                       help="seconds of those rates a client may send at once")
    serve.add_argument("--type-rates", default=_env("TYPE_RATES", _rates_text(limits.max_type_per_s)),
                       help="per message type, messages a second, over which they are dropped with a "
                       "'rate_limited' error (default: %(default)s)")
    serve.add_argument("--max-errors-per-s", type=int,
                       default=int(_env("MAX_ERRORS_PER_S", str(limits.max_errors_per_s))),
                       help="a client causing more errors a second is disconnected")
    serve.add_argument("--codec-threads", type=int, default=int(_env("CODEC_THREADS", "2")))
    serve.add_argument(
        "--torch-threads",
        type=int,
        default=int(_env("TORCH_THREADS", "0")),
        help="intra-op threads for CPU models (0: torch's default)",
    )
    serve.add_argument(
        "--ice-servers",
        default=_env("ICE_SERVERS", "[]"),
        help='JSON list of RTCIceServer objects, e.g. [{"urls": "stun:stun.example.org"}]',
    )
    serve.add_argument(
        "--server-ice-servers",
        default=_env("SERVER_ICE_SERVERS", ""),
        help="JSON list of ICE servers the server itself uses for WebRTC (default: the --ice-servers list)",
    )
    serve.add_argument(
        "--ice-host-addresses",
        default=_env("ICE_HOST_ADDRESSES", ""),
        help="comma-separated addresses WebRTC host candidates are gathered from (default: per offer, "
        "127.0.0.1 when the offer has a loopback candidate, else every non-loopback interface)",
    )
    serve.add_argument(
        "--ice-loopback-only",
        action="store_true",
        default=_env("ICE_LOOPBACK_ONLY", "") not in ("", "0", "false"),
        help="refuse WebRTC offers without a 127.0.0.1 candidate (nothing leaves the machine)",
    )
    serve.add_argument(
        "--rtc-connect-timeout",
        type=float,
        default=float(_env("RTC_CONNECT_TIMEOUT", "5")),
        help="seconds an answered WebRTC offer may take to connect (ICE + DTLS) before it is dropped; until it "
        "connects it holds no session slot (its session is admitted and opened at connect)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(_env("WORKERS", "1")),
        help="server processes sharing the port (SO_REUSEPORT), each with its own engine: one event loop "
        "carries a few hundred audio sessions' transports, a GPU steps thousands (streaming/workers.py)",
    )
    _add_access_options(serve)
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    _add_weights_parser(sub)
    _add_token_parser(sub)
    return parser


def _add_access_options(serve: argparse.ArgumentParser) -> None:
    access = serve.add_argument_group("access and per-client limits (docs/security.md)")
    access.add_argument(
        "--auth-secret-file",
        default=_env("AUTH_SECRET_FILE", ""),
        help="file holding the secret tokens are signed with (or CAUSALCAST_AUTH_SECRET); with one, every "
        "session, viewer, /streams, /config and /metrics request needs a token from `causalcast token`",
    )
    access.add_argument(
        "--no-auth",
        action="store_true",
        default=_env("NO_AUTH", "") not in ("", "0", "false"),
        help="serve a non-loopback address without tokens (refused otherwise)",
    )
    access.add_argument(
        "--allowed-origins",
        default=_env("ALLOWED_ORIGINS", ""),
        help="comma-separated origins (https://app.example.org) whose pages may connect besides the server's "
        "own; they also get CORS headers ('*': any origin)",
    )
    access.add_argument(
        "--max-sessions-per-client",
        type=int,
        default=int(_env("MAX_SESSIONS_PER_CLIENT", "8")),
        help="sessions one token (unless it sets its own) or one non-loopback address may hold at once "
        "(0: no limit)",
    )
    access.add_argument(
        "--max-pending-offers-per-client",
        type=int,
        default=int(_env("MAX_PENDING_OFFERS_PER_CLIENT", "4")),
        help="WebRTC offers one client may have answered but not yet connected (0: no limit)",
    )
    access.add_argument(
        "--max-offers-per-client-per-min",
        type=float,
        default=float(_env("MAX_OFFERS_PER_CLIENT_PER_MIN", "30")),
        help="WebRTC offers one client may post a minute, in bursts of up to 10; more get HTTP 429 (0: no limit)",
    )
    access.add_argument(
        "--turn-secret-file",
        default=_env("TURN_SECRET_FILE", ""),
        help="coturn's static-auth-secret (or CAUSALCAST_TURN_SECRET): /config mints time-limited TURN "
        "credentials per client for --turn-urls",
    )
    access.add_argument("--turn-urls", default=_env("TURN_URLS", ""), help="comma-separated turn:/turns: URLs")
    access.add_argument("--turn-ttl", type=float, default=float(_env("TURN_TTL", "3600")), help="seconds")
    access.add_argument(
        "--http-idle-timeout",
        type=float,
        default=float(_env("HTTP_IDLE_TIMEOUT", "10")),
        help="seconds a connection may take to send a request's headers, or sit idle between requests",
    )
    access.add_argument(
        "--ws-idle-timeout",
        type=float,
        default=float(_env("WS_IDLE_TIMEOUT", "30")),
        help="seconds a WebSocket may stay open with no session started or watched (0: no limit)",
    )
    access.add_argument(
        "--offer-body-timeout",
        type=float,
        default=float(_env("OFFER_BODY_TIMEOUT", "10")),
        help="seconds a WebRTC offer's body may take to arrive after its headers (then HTTP 408)",
    )


def _add_token_parser(sub: argparse._SubParsersAction) -> None:
    token = sub.add_parser("token", help="mint a signed, expiring access token")
    token.add_argument("--auth-secret-file", default=_env("AUTH_SECRET_FILE", ""), help="as for serve")
    token.add_argument("--models", nargs="*", default=None, help="models it may start (default: every one)")
    token.add_argument("--share", action="store_true", help="may share its sessions with viewers")
    token.add_argument("--watch", action="store_true", help="may list and watch shared sessions")
    token.add_argument("--max-sessions", type=int, default=None, help="sessions it may hold at once")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 1 h)")
    token.add_argument("--subject", default="", help="who it is for (shows in logs and TURN user names)")


def _read_secret(path: str, env_name: str) -> bytes | None:
    """A secret from a file (trailing newline dropped) or from the CAUSALCAST_<env_name> variable."""
    if path:
        with open(path, "rb") as f:
            return f.read().rstrip(b"\r\n")
    value = os.environ.get(f"CAUSALCAST_{env_name}")
    return value.encode() if value else None


def token_command(args: argparse.Namespace) -> int:
    """``causalcast token``: print a token signed with the server's secret."""
    from streaming.auth import mint_token

    try:
        secret = _read_secret(args.auth_secret_file, "AUTH_SECRET")
        if secret is None:
            raise ValueError("no secret: give --auth-secret-file or set CAUSALCAST_AUTH_SECRET")
        print(
            mint_token(
                secret,
                ttl_s=args.ttl,
                models=args.models,
                share=args.share,
                watch=args.watch,
                max_sessions=args.max_sessions,
                subject=args.subject,
            )
        )
    except (OSError, ValueError) as e:
        print(f"causalcast: {e}", file=sys.stderr)
        return 2
    return 0


def _add_weights_parser(sub: argparse._SubParsersAction) -> None:
    weights = sub.add_parser("weights", help="published weights: list, download, check")
    actions = weights.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the releases this build can serve")
    download = actions.add_parser("download", help="fetch a release from the hub (the only network command)")
    download.add_argument("name", help="release name (see `causalcast weights list`)")
    download.add_argument("--dir", required=True, help="folder to fill (created if needed)")
    download.add_argument("--no-optional", action="store_true", help="skip optional variants")
    check = actions.add_parser("check", help="files present, shapes and dtypes right; nothing is run")
    check.add_argument("dir", help="a weights folder")
    check.add_argument("--name", default=None, help="the release, for a folder without a manifest")
    check.add_argument("--hashes", action="store_true", help="also verify each file's SHA-256")


def weights_command(args: argparse.Namespace) -> int:
    """``causalcast weights list|download|check``; exit status 0 when all is well."""
    from models import weights

    if args.action == "list":
        for name, model in weights.available().items():
            if model is None:
                print(f"{name}: not supported by this build")
                continue
            total = sum(f.approx_bytes for f in model.files)
            print(f"{name}: serves as '{model.family}:weights=DIR' - {model.description} (~{total / 1e9:.1f} GB)")
        return 0
    try:
        if args.action == "download":
            missing = weights.download(args.name, args.dir, include_optional=not args.no_optional)
            if missing:
                print(f"still missing: {', '.join(missing)}", file=sys.stderr)
                return 1
            problems = weights.check(args.dir, args.name)
        else:
            problems = weights.check(args.dir, args.name, verify_hashes=args.hashes)
    except (CausalcastError, ValueError) as e:
        print(f"causalcast: {e}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.dir}: ok")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `causalcast` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "weights":
        return weights_command(args)
    if args.command == "token":
        return token_command(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = server_config(args)
    except ValueError as e:
        print(f"causalcast: {e}", file=sys.stderr)
        return 2
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.workers > 1:
        return serve_workers(config, args.workers, args.torch_threads, args.log_level.upper())
    try:
        run(config)
    except (ValueError, CausalcastError) as e:  # bad model names or options, bad published weights
        print(f"causalcast: {e}", file=sys.stderr)
        return 2
    return 0


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` that parsed ``serve`` options describe; raises ValueError on a bad option.

    Also used where something else runs the server (``streaming.ray_serve``: one per replica).
    """
    try:
        ice_servers = _json_list(args.ice_servers)
        server_ice_servers = _json_list(args.server_ice_servers) if args.server_ice_servers else None
    except ValueError as e:
        raise ValueError(f"ice servers: {e}") from e
    try:
        type_rates = parse_rates(args.type_rates)
    except ValueError as e:
        raise ValueError(f"--type-rates: {e}") from e
    host_addresses = tuple(a.strip() for a in args.ice_host_addresses.split(",") if a.strip()) or None
    try:
        access = AccessConfig(
            secret=_read_secret(args.auth_secret_file, "AUTH_SECRET"),
            no_auth=args.no_auth,
            allowed_origins=_split(args.allowed_origins),
            max_sessions_per_client=args.max_sessions_per_client or None,
            max_pending_offers_per_client=args.max_pending_offers_per_client or None,
            max_offers_per_client_per_min=args.max_offers_per_client_per_min or None,
            turn_secret=_read_secret(args.turn_secret_file, "TURN_SECRET"),
            turn_urls=_split(args.turn_urls),
            turn_ttl_s=args.turn_ttl,
        )
    except OSError as e:
        raise ValueError(f"secret file: {e}") from e
    check_access_config(access, args.host)
    return ServerConfig(
        host=args.host,
        port=args.port,
        models=tuple(args.models),
        engine=EngineConfig(
            device=args.device,
            limits=AdmissionLimits(
                max_utilization=args.max_utilization,
                max_sessions=args.max_sessions,
                max_loop_busy=args.max_loop_busy,
            ),
            session=SessionConfig(clock_lead_ms=args.clock_lead_ms, late_after_ms=args.late_after_ms),
        ),
        ws=WsConfig(max_message_bytes=args.max_message_bytes, idle_timeout_s=args.ws_idle_timeout or None),
        control=ControlLimits(
            max_messages_per_s=args.max_messages_per_s,
            max_bytes_per_s=args.max_bytes_per_s,
            burst_s=args.rate_burst_s,
            max_type_per_s=type_rates,
            max_errors_per_s=args.max_errors_per_s,
        ),
        codec_threads=args.codec_threads,
        ice_servers=tuple(ice_servers),
        webrtc=RtcConfig(
            host_addresses=host_addresses,
            loopback_only=args.ice_loopback_only,
            ice_servers=tuple(server_ice_servers) if server_ice_servers is not None else None,
            connect_timeout_s=args.rtc_connect_timeout,
            offer_body_timeout_s=args.offer_body_timeout,
        ),
        access=access,
        http_idle_timeout_s=args.http_idle_timeout,
    )


def _rates_text(rates: Mapping[str, float]) -> str:
    return ",".join(f"{kind}={rate:g}" for kind, rate in rates.items())


def parse_rates(text: str) -> dict[str, float]:
    """``"ping=20,request_keyframe=4"`` -> ``{"ping": 20.0, "request_keyframe": 4.0}``."""
    rates = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, rate = item.partition("=")
        if not sep or not kind.strip():
            raise ValueError(f"{item!r} is not TYPE=RATE")
        rates[kind.strip()] = float(rate)
    return rates


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _json_list(text: str) -> list:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError("must be a JSON list")
    return value
