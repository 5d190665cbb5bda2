"""Round trips of latency markers through the pitch shifter, one function per client and transport.

Each returns ``(delays in seconds, number of markers sent)``: a marker's sample on the sender's clock to
the same sample on the receiver's clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid

import numpy as np

from bench.g2g.common import MODEL_RATE, RATE
from bench.g2g.mulaw import ulaw_decode, ulaw_encode
from streaming.client import Client
from streaming.client.webrtc import FRAME_SAMPLES, ArrayAudioTrack, RtcClient, take_for
from streaming.media.markers import marker_times, marker_train, match_markers
from streaming.protocol import MediaKind
from streaming.transports.rtc_support import mono_samples


async def webrtc_python(
    base_url: str, num_markers: int, period_s: float, *, fastrtc: bool = False, prefetch: int = 0
) -> tuple[list[float], int]:
    signal, _ = marker_train(RATE, num_markers, period_s)
    track = ArrayAudioTrack(signal)
    client = RtcClient(base_url, offer_path="/webrtc/offer" if fastrtc else "/offer", audio_prefetch=prefetch)
    received: list[tuple[float, np.ndarray]] = []
    try:
        extra = {"webrtc_id": uuid.uuid4().hex} if fastrtc else None
        await client.connect("pitch", {"semitones": 0}, audio=track, extra=extra)
        await client.wait_connected(20)
        frames = await take_for(client.audio_frames, len(signal) / RATE + 1.0)
        received = [(arrival, mono_samples(frame)) for arrival, frame in frames]
    finally:
        await client.close()
    sent = [(t, signal[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i, t in enumerate(track.sent_at)]
    sent_times = marker_times(sent, RATE)
    return match_markers(sent_times, marker_times(received, RATE)), len(sent_times)


async def ws_python(base_url: str, num_markers: int, period_s: float) -> tuple[list[float], int]:
    """The causalcast WebSocket protocol, PCM16 both ways at the model rate, sent on a drift-free clock."""
    signal, _ = marker_train(MODEL_RATE, num_markers, period_s)
    frame = 320
    sent: list[tuple[float, np.ndarray]] = []
    received: list[tuple[float, np.ndarray]] = []
    async with Client(base_url.replace("http://", "ws://") + "/ws") as client:
        await client.start("pitch", {"semitones": 0}, input_sample_rate_hz=MODEL_RATE, audio="pcm16")

        async def receive() -> None:
            while True:
                item = await client.receive(timeout=None)
                if not isinstance(item, dict) and item.kind is MediaKind.AUDIO:
                    pcm = np.frombuffer(item.payload, "<i2").astype(np.float32) / 32768
                    received.append((time.monotonic(), pcm))

        task = asyncio.create_task(receive())
        start = time.monotonic()
        for i in range(0, len(signal) - frame + 1, frame):
            due = start + i / MODEL_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            chunk = signal[i : i + frame]
            sent.append((time.monotonic(), chunk))
            await client.send_audio(chunk)
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
    sent_times = marker_times(sent, MODEL_RATE)
    return match_markers(sent_times, marker_times(received, MODEL_RATE)), len(sent_times)


async def fastrtc_ws_python(base_url: str, num_markers: int, period_s: float) -> tuple[list[float], int]:
    """Round trips over fastrtc's WebSocket protocol (JSON events, base64 mu-law at the handler's rate)."""
    import aiohttp

    signal, _ = marker_train(MODEL_RATE, num_markers, period_s)
    frame = 320
    sent: list[tuple[float, np.ndarray]] = []
    received: list[tuple[float, np.ndarray]] = []
    url = base_url.replace("http://", "ws://") + "/websocket/offer"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json({"event": "start", "websocket_id": uuid.uuid4().hex})

        async def receive() -> None:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                if event.get("event") == "media":
                    received.append((time.monotonic(), ulaw_decode(base64.b64decode(event["media"]["payload"]))))

        task = asyncio.create_task(receive())
        start = time.monotonic()
        for i in range(0, len(signal) - frame + 1, frame):
            await asyncio.sleep(max(0.0, start + i / MODEL_RATE - time.monotonic()))
            chunk = signal[i : i + frame]
            sent.append((time.monotonic(), chunk))
            pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
            await ws.send_json({"event": "media", "media": {"payload": base64.b64encode(ulaw_encode(pcm)).decode()}})
        await asyncio.sleep(1.0)
        await ws.send_json({"event": "stop"})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    sent_times = marker_times(sent, MODEL_RATE)
    return match_markers(sent_times, marker_times(received, MODEL_RATE), max_delay_s=5.0), len(sent_times)
