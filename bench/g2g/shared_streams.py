"""Shared streams: one WebRTC test-card producer, N WebRTC viewers, server and clients in one process.

Reads the broadcast's counters (encodes per chunk), frame latency from the model to each decoded frame,
frame order, and the A/V offset at the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

import numpy as np

from bench.g2g.common import emit
from streaming.client.webrtc import RtcClient, take_for


class _ChunkTimes:
    """A session tap that notes when each output chunk was produced (by its first video pts)."""

    def __init__(self) -> None:
        self.produced: dict[int, float] = {}

    def on_chunk(self, chunk: Any) -> None:
        if chunk.video_pts:
            self.produced[chunk.video_pts[0]] = time.monotonic()

    def on_notice(self, notice: dict[str, Any]) -> None:
        pass

    def on_close(self, reason: str) -> None:
        pass


async def shared_stream_run(num_viewers: int, seconds: float) -> dict[str, Any]:
    """A WebRTC test-card producer with ``num_viewers`` WebRTC viewers, in this process (white-box counters).

    Reports encodes per chunk (what viewers cost in encoding), frame latency from the chunk leaving the
    model to the decoded frame at the client (producer and viewers), frames in order, and the A/V offset
    (video minus audio arrival of the once-a-second beep and marker) at the clients.
    """
    from aiohttp import web

    from models.diagnostic.testcard import has_beep_marker, read_frame_number
    from streaming.client.onsets import av_offsets_ms, beep_onsets, marker_onsets
    from streaming.server import BROADCASTS_KEY, ENGINE_KEY, ServerConfig, create_app
    from streaming.transports.webrtc import RtcConfig

    config = ServerConfig(models=("testcard",), webrtc=RtcConfig(loopback_only=True))
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    producer = RtcClient(url)
    viewers = [RtcClient(url) for _ in range(num_viewers)]
    try:
        answer = await producer.connect("testcard", receive_audio=True, receive_video=True, extra={"share": True})
        await producer.wait_connected(10)
        await producer.expect("ready")  # the session opens when ICE connects, after the client sees 'connected'
        session = next(s for s in runner.app[ENGINE_KEY].scheduler.sessions.values() if s.id == answer["session"])
        times = _ChunkTimes()
        session.taps.append(times)
        for viewer in viewers:
            await viewer.watch(answer["session"])
        await asyncio.gather(*(v.wait_connected(20) for v in viewers))
        await asyncio.sleep(1.0)  # every viewer joined and started at a key frame
        broadcast = runner.app[BROADCASTS_KEY]._broadcasts[answer["session"]]
        clients = [producer, *viewers]
        for client in clients:
            for queue in (client.audio_frames, client.video_frames):
                while not queue.empty():
                    queue.get_nowait()
        encoded0, chunks0 = broadcast.num_encoded_chunks, session.stats.chunks_out
        media = await asyncio.gather(*(take_for(q, seconds) for c in clients for q in (c.audio_frames, c.video_frames)))
        encodes_per_chunk = (broadcast.num_encoded_chunks - encoded0) / max(1, session.stats.chunks_out - chunks0)
        latency: dict[str, list[float]] = {"producer": [], "viewer": []}
        offsets: dict[str, list[float]] = {"producer": [], "viewer": []}
        gaps = 0
        for i in range(len(clients)):
            role = "producer" if i == 0 else "viewer"
            audio, video = media[2 * i], media[2 * i + 1]
            numbers = []
            for arrival, frame in video:
                number = read_frame_number(frame.to_ndarray(format="rgb24"))
                numbers.append(number)
                produced = times.produced.get(number * 3600)  # 25 fps: 3600 ticks of 90 kHz per frame
                if produced is not None:
                    latency[role].append(arrival - produced)
            gaps += sum(b != a + 1 for a, b in zip(numbers, numbers[1:], strict=False))
            offsets[role] += av_offsets_ms(beep_onsets(audio), marker_onsets(video, has_beep_marker))
        out: dict[str, Any] = {"bench": "shared_stream", "model": "testcard", "viewers": num_viewers,
                               "transport": "webrtc", "codec_choices": len(broadcast._encoders),
                               "encodes_per_chunk": round(encodes_per_chunk, 3), "frame_gaps": gaps,
                               "load_avg": os.getloadavg()[0]}  # fmt: skip
        for role in ("producer", "viewer"):
            if latency[role]:
                ms = np.array(latency[role]) * 1000
                out[f"{role}_frame_latency_ms_p50"] = round(float(np.percentile(ms, 50)), 1)
                out[f"{role}_frame_latency_ms_p99"] = round(float(np.percentile(ms, 99)), 1)
            if offsets[role]:
                av = np.array(offsets[role])
                out[f"{role}_av_offset_ms_median"] = round(float(np.median(av)), 1)
                out[f"{role}_av_offset_ms_max_abs"] = round(float(np.abs(av).max()), 1)
        return out
    finally:
        for client in viewers + [producer]:
            await client.close()
        await runner.cleanup()


async def shared_stream_runs(args: argparse.Namespace) -> None:
    for num in args.viewers:
        emit(await shared_stream_run(num, args.viewer_seconds))
