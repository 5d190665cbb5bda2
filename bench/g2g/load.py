"""Sessions held in real time as the number of concurrent pitch sessions grows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from bench.g2g.clients import webrtc_python, ws_python


async def sessions_held(
    base_url: str, num: int, seconds: float, *, fastrtc: bool, transport: str, baseline_ms: float | None
) -> dict[str, Any]:
    """Run ``num`` sessions at once and judge whether they were held in real time.

    Held: none failed, <= 2 % of markers lost, latency did not grow during the run (the last quarter's
    median within 50 ms of the first quarter's, in every session), and p99 within 150 ms of this server's
    single-session median.
    """
    period = 0.5
    count = max(4, int(seconds / period))
    started = time.monotonic()
    if transport == "ws":
        runs = [ws_python(base_url, count, period) for _ in range(num)]
    else:
        runs = [webrtc_python(base_url, count, period, fastrtc=fastrtc) for _ in range(num)]
    results = await asyncio.gather(*runs, return_exceptions=True)
    delays: list[float] = []
    sent = failed = 0
    growth_ms = 0.0
    for r in results:
        if isinstance(r, BaseException):
            failed += 1
            continue
        delays += r[0]
        sent += r[1]
        quarter = max(1, len(r[0]) // 4)
        if len(r[0]) >= 4:
            growth_ms = max(growth_ms, (np.median(r[0][-quarter:]) - np.median(r[0][:quarter])) * 1000)
    lost = 1 - len(delays) / sent if sent else 1.0
    ms = np.array(delays) * 1000 if delays else np.array([np.inf])
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    reference = baseline_ms if baseline_ms is not None else p50
    held = bool(failed == 0 and lost <= 0.02 and growth_ms <= 50.0 and p99 <= reference + 150.0)
    return {
        "sessions": num,
        "failed_sessions": failed,
        "markers_lost_rate": round(lost, 4),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "latency_growth_ms": round(float(growth_ms), 1),
        "held": held,
        "wall_s": round(time.monotonic() - started, 1),
    }
