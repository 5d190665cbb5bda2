"""A Python WebRTC client of a causalcast server (aiortc), for tests, benches and scripts.

client = RtcClient("http://127.0.0.1:8080")
await client.connect("pitch", {"semitones": 4}, audio=ArrayAudioTrack(samples_48k))
ready = await client.expect("ready")
arrival_s, frame = await client.audio_frames.get()     # decoded av.AudioFrame and its arrival time
await client.close()

``await client.watch(session_id, receive_video=True)`` instead makes a receive-only viewer of a shared
session. By default it gathers only a 127.0.0.1 host candidate, uses no ICE servers (so nothing leaves the
machine), releases received audio packets at once (``audio_prefetch=0``; aiortc's default holds 4), and
hands a video frame to the decoder when its last packet arrives (aiortc waits for the next frame's first).
The same client talks to any server that speaks aiortc's ``/offer`` shape (fastrtc's included, given its
extra body fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from streaming.media.codecs import AudioEncoder
from streaming.protocol import AudioCodec
from streaming.transports import rtc_support

AUDIO_RATE_HZ = 48_000
FRAME_SAMPLES = 960  # 20 ms


class RtcServerError(Exception):
    """The server refused the offer (HTTP 4xx/5xx) or sent an `error` message."""

    def __init__(self, message: dict[str, Any], status: int | None = None) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.status = status
        self.code = message.get("code")
        self.message = message


class ArrayAudioTrack(MediaStreamTrack):
    """Plays mono float32 samples at 48 kHz as 20 ms frames in real time, then silence (or ends).

    ``sent_at[i]`` is the monotonic time frame ``i`` was handed to the sender: the "glass" time of its
    first sample. With ``opus=True`` (what :class:`RtcClient` negotiates for it) the track hands aiortc
    finished low-delay Opus packets, as the server's tracks do: no executor hop per packet, so many
    clients in one process stay cheap; otherwise it hands over PCM frames for aiortc to encode.
    """

    kind = "audio"

    def __init__(self, samples: np.ndarray, *, end_with_silence: bool = True, opus: bool = True) -> None:
        super().__init__()
        self.samples = np.asarray(samples, dtype=np.float32)
        self.end_with_silence = end_with_silence
        self.sent_at: list[float] = []
        self._start: float | None = None
        self._index = 0
        self._time_base = fractions.Fraction(1, AUDIO_RATE_HZ)
        self.encoder = AudioEncoder(AudioCodec.OPUS, AUDIO_RATE_HZ, 48_000) if opus else None

    @property
    def finished(self) -> bool:
        """True once every sample was sent."""
        return self._index * FRAME_SAMPLES >= len(self.samples)

    async def recv(self) -> av.AudioFrame | av.Packet:
        """The next frame, on a drift-free 20 ms clock."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index * FRAME_SAMPLES / AUDIO_RATE_HZ
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        begin = self._index * FRAME_SAMPLES
        chunk = self.samples[begin : begin + FRAME_SAMPLES]
        if len(chunk) < FRAME_SAMPLES:
            if not self.end_with_silence and len(chunk) == 0:
                self.stop()
                raise MediaStreamError
            chunk = np.concatenate([chunk, np.zeros(FRAME_SAMPLES - len(chunk), np.float32)])
        self.sent_at.append(time.monotonic())
        self._index += 1
        if self.encoder is not None:
            (encoded,) = self.encoder.encode(chunk, begin)  # one 20 ms packet per 20 ms frame
            packet = av.Packet(encoded.payload)
            packet.pts, packet.time_base = encoded.pts, self._time_base
            return packet
        frame = rtc_support.stereo_s16_frame((np.clip(chunk, -1, 1) * 32767).round().astype(np.int16), AUDIO_RATE_HZ)
        frame.pts, frame.time_base = begin, self._time_base
        return frame


class RtcClient:
    """One peer connection to a causalcast (or aiortc-shaped) server."""

    def __init__(
        self,
        base_url: str,
        *,
        ice_servers: Sequence[dict[str, Any]] = (),
        host_addresses: Sequence[str] | None = ("127.0.0.1",),
        audio_prefetch: int = 0,
        offer_path: str = "/offer",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.offer_path = offer_path
        self.ice_servers = list(ice_servers)
        self.host_addresses = tuple(host_addresses) if host_addresses is not None else None
        self.audio_prefetch = audio_prefetch
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None
        self.answer: dict[str, Any] | None = None
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.audio_frames: asyncio.Queue[tuple[float, av.AudioFrame]] = asyncio.Queue()
        self.video_frames: asyncio.Queue[tuple[float, av.VideoFrame]] = asyncio.Queue()
        self.connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def loopback_only(self) -> bool:
        """True when this client gathers only loopback candidates."""
        return self.host_addresses is not None and all(rtc_support.is_loopback(a) for a in self.host_addresses)

    async def connect(
        self,
        model: str,
        params: dict[str, Any] | None = None,
        *,
        audio: MediaStreamTrack | None = None,
        receive_audio: bool = True,
        receive_video: bool = False,
        data_channel: bool = True,
        video_codec: str | None = None,
        extra: dict[str, Any] | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Offer, post, apply the answer; returns the answer body. Raises :class:`RtcServerError`."""
        body = {"model": model, "params": params or {}, **(extra or {})}
        return await self._negotiate(body, audio, receive_audio, receive_video, data_channel, video_codec, timeout)

    async def watch(
        self,
        session_id: str,
        *,
        receive_audio: bool = True,
        receive_video: bool = True,
        data_channel: bool = True,
        video_codec: str | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Watch a shared session (a receive-only peer); returns the answer body."""
        body = {"watch": session_id}
        return await self._negotiate(body, None, receive_audio, receive_video, data_channel, video_codec, timeout)

    async def _negotiate(
        self,
        fields: dict[str, Any],
        audio: MediaStreamTrack | None,
        receive_audio: bool,
        receive_video: bool,
        data_channel: bool,
        video_codec: str | None,
        timeout: float,
    ) -> dict[str, Any]:
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in self.ice_servers]))
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        if data_channel:
            self.channel = pc.createDataChannel("control")
            self.channel.on("message", self._on_message)
        if audio is not None:
            sender = pc.addTransceiver(audio, direction="sendrecv" if receive_audio else "sendonly")
            if getattr(audio, "encoder", None) is not None:  # the track sends Opus packets: offer only Opus
                codecs = RTCRtpReceiver.getCapabilities("audio").codecs
                sender.setCodecPreferences([c for c in codecs if c.mimeType.lower() == "audio/opus"])
        elif receive_audio:
            pc.addTransceiver("audio", direction="recvonly")
        if receive_video:
            video = pc.addTransceiver("video", direction="recvonly")
            if video_codec is not None:  # e.g. "H264": offer only that codec (and its RTX)
                codecs = RTCRtpReceiver.getCapabilities("video").codecs
                chosen = [c for c in codecs if c.mimeType.lower() == f"video/{video_codec.lower()}"]
                video.setCodecPreferences(chosen + [c for c in codecs if c.mimeType.lower() == "video/rtx"])
        rtc_support.tune_audio_receivers(pc, self.audio_prefetch)
        rtc_support.tune_video_receivers(pc)  # a frame goes to the decoder when its last packet arrives
        with rtc_support.gathering_from(self.host_addresses):
            await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer", **fields}
        answer = await self.post_offer(body, timeout)
        sdp = rtc_support.filter_candidates(answer["sdp"], loopback_only=self.loopback_only)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=answer["type"]))
        self.answer = answer
        return answer

    async def post_offer(self, body: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        """POST an offer body; returns the JSON answer or raises :class:`RtcServerError`."""
        async with aiohttp.ClientSession() as http:
            async with http.post(
                self.base_url + self.offer_path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                text = await response.text()
                try:
                    reply = json.loads(text)
                except ValueError:
                    reply = {"code": "http", "message": text}
                if response.status != 200:
                    raise RtcServerError(reply if isinstance(reply, dict) else {"message": reply}, response.status)
                return reply

    async def wait_connected(self, timeout: float = 20.0) -> None:
        """Wait until ICE and DTLS are up."""
        await asyncio.wait_for(self.connected.wait(), timeout)

    def send(self, message: dict[str, Any]) -> None:
        """Send a control message on the data channel."""
        self.channel.send(json.dumps(message))

    async def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Skip messages until one of type ``kind``; an `error` raises (unless that is what is expected)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await asyncio.wait_for(self.messages.get(), max(0.0, deadline - time.monotonic()))
            if message.get("type") == kind:
                return message
            if message.get("type") == "error" and kind != "error":
                raise RtcServerError(message)

    async def close(self) -> None:
        """Close the peer connection and stop collecting."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.pc is not None:
            await self.pc.close()

    def selected_pair(self) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """The nominated ICE pair ((local host, port), (remote host, port))."""
        return rtc_support.selected_pair(self.pc) if self.pc is not None else None

    # -- internals ------------------------------------------------------------------------------------
    def _on_state(self) -> None:
        if self.pc is not None and self.pc.connectionState == "connected":
            self.connected.set()

    def _on_message(self, message: str | bytes) -> None:
        with contextlib.suppress(ValueError):
            decoded = json.loads(message)
            if isinstance(decoded, dict):
                self.messages.put_nowait(decoded)

    def _on_track(self, track: MediaStreamTrack) -> None:
        queue = self.audio_frames if track.kind == "audio" else self.video_frames
        self._tasks.append(asyncio.create_task(_collect(track, queue), name=f"rtc-client-{track.kind}"))


async def _collect(track: MediaStreamTrack, queue: asyncio.Queue[Any]) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        queue.put_nowait((time.monotonic(), frame))


async def loopback_offer_sdp() -> str:
    """An audio + data-channel offer gathered on 127.0.0.1 only, from a peer that is closed at once.

    For probes and benches that post offers whose answers are never applied (ICE cannot complete).
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("control")
    pc.addTransceiver("audio", direction="sendrecv")
    with rtc_support.gathering_from(("127.0.0.1",)):
        await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def take_for(queue: asyncio.Queue[Any], seconds: float) -> list[Any]:
    """Everything ``queue`` (e.g. a client's ``audio_frames``) receives within the next ``seconds``."""
    out, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            out.append(await asyncio.wait_for(queue.get(), left))
        except TimeoutError:
            break
    return out
