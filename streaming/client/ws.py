"""A Python client for the causalcast WebSocket protocol (used by tests, benches and scripts).

async with Client("ws://127.0.0.1:8080/ws") as client:
ready = await client.start("pitch", {"semitones": 4}, input_sample_rate_hz=16000, audio="pcm16")
await client.send_audio(samples)            # float32 or int16, pts counted for you
item = await client.receive()               # a control dict or a MediaFrame
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import numpy as np

from streaming.media.codecs import AudioDecoder, VideoDecoder
from streaming.protocol import (
    PROTOCOL_VERSION,
    AudioCodec,
    MediaFrame,
    MediaKind,
    VideoCodec,
    pack_media,
    unpack_media,
)


class ServerError(Exception):
    """The server answered with an `error` message."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.code = message.get("code")
        self.message = message


class Client:
    """One WebSocket connection to a causalcast server."""

    def __init__(self, url: str, *, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self.url = url
        self.max_message_bytes = max_message_bytes
        self.ready: dict[str, Any] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self._pts = 0

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the WebSocket."""
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url, max_msg_size=self.max_message_bytes, autoping=True)

    async def close(self) -> None:
        """Close the WebSocket (a clean close; use :meth:`abort` to vanish)."""
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def abort(self) -> None:
        """Drop the TCP connection without a close handshake (a client vanishing mid-stream)."""
        if self._ws is not None:
            transport = self._ws._response.connection.transport if self._ws._response.connection else None
            if transport is not None:
                transport.abort()
        if self._http is not None:
            await self._http.close()

    @property
    def ws(self) -> aiohttp.ClientWebSocketResponse:
        """The underlying socket (raises if not connected)."""
        if self._ws is None:
            raise RuntimeError("not connected")
        return self._ws

    # -- sending -------------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        """Send a control message."""
        await self.ws.send_str(json.dumps(message))

    async def start(
        self,
        model: str,
        params: dict[str, Any] | None = None,
        *,
        input_sample_rate_hz: int | None = None,
        audio: str = "pcm16",
        video: str = "jpeg",
        share: bool = False,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Start a session and wait for `ready`; raises :class:`ServerError` on an `error` reply.

        ``share`` lets viewers `watch` the session's output (see :meth:`watch`).
        """
        message: dict[str, Any] = {
            "type": "start",
            "protocol": PROTOCOL_VERSION,
            "model": model,
            "params": params or {},
            "output": {"audio": audio, "video": video},
            "share": share,
        }
        if input_sample_rate_hz is not None:
            message["input"] = {"sample_rate_hz": input_sample_rate_hz, "codec": "pcm16"}
        await self.send(message)
        reply = await self.expect("ready", timeout=timeout)
        self.ready = reply
        self._seq = self._pts = 0
        return reply

    async def watch(
        self, session_id: str, *, audio: str = "opus", video: str = "jpeg", timeout: float = 10.0
    ) -> dict[str, Any]:
        """Watch a shared session's output; returns the `watching` message (its `streams` like `ready`'s)."""
        await self.send({"type": "watch", "session": session_id, "output": {"audio": audio, "video": video}})
        reply = await self.expect("watching", timeout=timeout)
        self.ready = reply
        return reply

    async def send_audio(self, samples: np.ndarray, pts: int | None = None) -> None:
        """Send mono audio (float32 in [-1, 1] or int16) as one PCM16 frame."""
        if samples.dtype != np.int16:
            samples = (np.clip(samples, -1, 1) * 32767).round().astype(np.int16)
        pts = self._pts if pts is None else pts
        await self.ws.send_bytes(pack_media(MediaKind.AUDIO, AudioCodec.PCM16, 0, self._seq, pts, samples.tobytes()))
        self._seq += 1
        self._pts = pts + len(samples)

    async def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop the session; returns the `stopped` message (media still in flight is discarded)."""
        await self.send({"type": "stop"})
        return await self.expect("stopped", timeout=timeout)

    # -- receiving -----------------------------------------------------------------------------------
    async def receive(self, timeout: float | None = 10.0) -> dict[str, Any] | MediaFrame:
        """Next control message (dict) or media frame; raises on close or timeout."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type is aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return unpack_media(msg.data)
        raise ConnectionError(f"websocket closed ({msg.type.name}, code {self.ws.close_code}): {msg.extra}")

    async def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Skip media and other messages until a control message of type ``kind``; errors raise."""
        deadline = time.monotonic() + timeout
        while True:
            item = await self.receive(max(0.0, deadline - time.monotonic()))
            if isinstance(item, dict):
                if item.get("type") == kind:
                    return item
                if item.get("type") == "error" and kind != "error":
                    raise ServerError(item)


def pcm16_base64(samples: np.ndarray) -> str:
    """Float samples in [-1, 1] as base64 PCM16: the audio field of events such as the avatar's ``say``."""
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


class MediaCollector:
    """Decodes received frames per stream: audio to one float32 array, video to a list of RGB frames."""

    def __init__(self, ready: dict[str, Any]) -> None:
        self.streams = {s["id"]: s for s in ready["streams"]}
        self.audio_decoders: dict[int, AudioDecoder] = {}
        self.video_decoders: dict[int, VideoDecoder] = {}
        self.audio: dict[int, list[np.ndarray]] = {}
        self.video: dict[int, list[np.ndarray]] = {}
        self.frames: list[MediaFrame] = []  # every frame, in arrival order

    def add(self, frame: MediaFrame) -> None:
        """Decode and keep one frame."""
        self.frames.append(frame)
        if frame.kind is MediaKind.AUDIO:
            dec = self.audio_decoders.setdefault(frame.stream, AudioDecoder(AudioCodec(frame.codec)))
            self.audio.setdefault(frame.stream, []).append(dec.decode(frame.payload))
        else:
            dec_v = self.video_decoders.setdefault(frame.stream, VideoDecoder(VideoCodec(frame.codec)))
            self.video.setdefault(frame.stream, []).extend(dec_v.decode(frame.payload))

    def audio_samples(self, stream: int = 0) -> np.ndarray:
        """All decoded audio of a stream so far."""
        parts = self.audio.get(stream, [])
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
