"""Glass-to-glass latency of causalcast's transports, side by side with fastrtc, and sessions held under load.

Markers (4 ms tone bursts, streaming/media/markers.py) go through the diagnostic pitch shifter at 0
semitones (a pure 15 ms delay, reported as ``model_delay_ms``) and are found again on return. Latency is
the time from a marker's sample on the sender's clock to the same sample on the receiver's clock: for the
Python clients, frames are stamped when they are handed to / come out of the transport; in Chromium, the
page's AudioWorklet records its synthetic microphone and what comes back on one AudioContext clock (so
the browser's jitter buffer and WebAudio path are included; sound-card buffers are not).

Every server runs as a subprocess on 127.0.0.1 (no ICE servers; candidates on 127.0.0.1 only). fastrtc
(PyPI ``fastrtc``, not a test dependency: ``.venv/bin/pip install -e ".[bench]"``) serves the same pitch
shifter as an ``AsyncStreamHandler``; its WebRTC client opens a data channel (fastrtc sends no audio
without one). Output: one JSON object per line.

    .venv/bin/python bench/glass_to_glass.py                      # everything available
    .venv/bin/python bench/glass_to_glass.py --markers 60 --load 1,2,4,8,16 --no-chromium
    .venv/bin/python bench/glass_to_glass.py --only-viewers --viewers 1,4,8   # shared streams only

Shared streams (``--viewers``): one WebRTC test-card producer with N WebRTC viewers, server and clients in
this process so the broadcast's counters can be read: encodes per chunk, frame latency from the model to
the decoded frame at each client, frames in order, and the A/V offset at the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (run as a script)

from bench.g2g.chromium import CHROMEDRIVER, CHROMIUM, chromium_available, chromium_round_trip  # noqa: E402
from bench.g2g.clients import fastrtc_ws_python, webrtc_python, ws_python  # noqa: E402
from bench.g2g.common import emit, growth_ms, pitch_model_delay_ms, summarize  # noqa: E402
from bench.g2g.load import sessions_held  # noqa: E402
from bench.g2g.servers import causalcast_server, fastrtc_installed, fastrtc_server, free_port  # noqa: E402
from bench.g2g.shared_streams import shared_stream_runs  # noqa: E402


async def latency_runs(url: str, server: str, args: argparse.Namespace, model_ms: float) -> None:
    base = {"bench": "glass_to_glass", "server": server}
    if server == "causalcast":
        for prefetch in (0, 4):
            delays, sent = await webrtc_python(url, args.markers, args.period, prefetch=prefetch)
            client = "python-aiortc" + ("" if prefetch == 0 else "-default-jitter")
            emit({**base, "transport": "webrtc", "client": client, **summarize(delays, sent, model_ms)})
        delays, sent = await ws_python(url, args.markers, args.period)
        emit({**base, "transport": "ws", "client": "python", "latency_growth_ms": growth_ms(delays),
              **summarize(delays, sent, model_ms)})  # fmt: skip
        if args.chromium and chromium_available():
            for transport in ("webrtc", "ws"):
                delays, sent = await asyncio.to_thread(chromium_round_trip, url, transport, args.markers, args.period)
                emit({**base, "transport": transport, "client": "chromium", **summarize(delays, sent, model_ms)})
        elif args.chromium:
            emit({**base, "client": "chromium", "skipped": f"needs {CHROMIUM} and {CHROMEDRIVER}"})
    else:
        for prefetch in (0, 4):
            delays, sent = await webrtc_python(url, args.markers, args.period, fastrtc=True, prefetch=prefetch)
            client = "python-aiortc" + ("" if prefetch == 0 else "-default-jitter")
            emit({**base, "transport": "webrtc", "client": client, **summarize(delays, sent, model_ms)})
        delays, sent = await fastrtc_ws_python(url, args.markers, args.period)
        emit({**base, "transport": "ws", "client": "python", "latency_growth_ms": growth_ms(delays),
              **summarize(delays, sent, model_ms)})  # fmt: skip


async def load_runs(urls: dict[str, str], args: argparse.Namespace) -> None:
    """Sessions held as N grows, each server/transport in turn at every N (same machine conditions)."""
    runs = [("causalcast", "webrtc"), ("fastrtc", "webrtc"), ("causalcast", "ws")]
    runs = [r for r in runs if r[0] in urls]
    baselines: dict[tuple[str, str], float] = {}
    for num in args.load:
        for server, transport in list(runs):
            result = await sessions_held(
                urls[server],
                num,
                args.load_seconds,
                fastrtc=server == "fastrtc",
                transport=transport,
                baseline_ms=baselines.get((server, transport)),
            )
            baselines.setdefault((server, transport), result["p50_ms"])
            emit({"bench": "sessions_held", "server": server, "transport": transport, **result})
            if not result["held"]:
                runs.remove((server, transport))


async def soak_runs(url: str, seconds: float, model_ms: float) -> None:
    """Send one marker a second for ``seconds`` per transport, to see whether latency drifts."""
    count = int(seconds)
    for transport in ("ws", "webrtc"):
        run = ws_python if transport == "ws" else webrtc_python
        delays, sent = await run(url, count, 1.0)
        minute = min(60, max(1, len(delays) // 4))
        first, last = np.median(delays[:minute]) * 1000, np.median(delays[-minute:]) * 1000
        emit(
            {
                "bench": "soak",
                "server": "causalcast",
                "transport": transport,
                "client": "python",
                "seconds": seconds,
                "first_minute_p50_ms": round(float(first), 1),
                "last_minute_p50_ms": round(float(last), 1),
                "drift_ms": round(float(last - first), 1),
                **summarize(delays, sent, model_ms),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markers", type=int, default=60, help="markers per latency run (>= 50 for p99)")
    parser.add_argument("--period", type=float, default=0.25, help="seconds between markers")
    parser.add_argument("--load", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    parser.add_argument("--load-seconds", type=float, default=8.0)
    parser.add_argument("--no-chromium", dest="chromium", action="store_false")
    parser.add_argument("--soak-s", type=float, default=0.0, help="also run one long WS + WebRTC session (drift)")
    parser.add_argument("--no-fastrtc", dest="fastrtc", action="store_false")
    parser.add_argument("--concurrency-limit", type=int, default=64, help="fastrtc's (integer) concurrency_limit")
    parser.add_argument("--viewers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8],
                        help="shared-stream runs: WebRTC viewers of one test-card producer")  # fmt: skip
    parser.add_argument("--viewer-seconds", type=float, default=8.0)
    parser.add_argument("--only-viewers", action="store_true", help="only the shared-stream runs")
    args = parser.parse_args()
    if args.only_viewers:
        asyncio.run(shared_stream_runs(args))
        return
    model_ms = pitch_model_delay_ms()
    emit({"bench": "setup", "model": "pitch", "semitones": 0, "model_delay_ms": round(model_ms, 2),
          "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()})  # fmt: skip
    with contextlib.ExitStack() as servers:
        urls = {"causalcast": servers.enter_context(causalcast_server(free_port()))}
        asyncio.run(latency_runs(urls["causalcast"], "causalcast", args, model_ms))
        if args.soak_s:
            asyncio.run(soak_runs(urls["causalcast"], args.soak_s, model_ms))
        if not args.fastrtc:
            pass
        elif not fastrtc_installed():
            emit({"bench": "glass_to_glass", "server": "fastrtc", "skipped": "fastrtc is not installed "
                  "(.venv/bin/pip install -e '.[bench]'; it is a bench-only dependency)"})  # fmt: skip
        else:
            urls["fastrtc"] = servers.enter_context(fastrtc_server(free_port(), args.concurrency_limit))
            asyncio.run(latency_runs(urls["fastrtc"], "fastrtc", args, model_ms))
        asyncio.run(load_runs(urls, args))
    asyncio.run(shared_stream_runs(args))


if __name__ == "__main__":
    main()
