"""Shared streams: any number of viewers watch one producer session, encoded once per codec choice.

A producer opts in with ``"share": true`` in `start`; a viewer sends `watch` with the session id. The
producer's session gets a tap (:class:`Broadcast`) that receives each stamped output chunk on the event
loop; one task encodes it once per distinct (audio, video) codec choice among the viewers and hands the
same bytes to each of them. Many viewers therefore cost no model work and no extra encoding, only
socket writes.

Every viewer has a bounded queue. A viewer that reads too slowly loses its oldest frames and then skips
video until the next key frame (and one is requested), so it never decodes garbage and never grows
memory. A viewer joining late starts at a key frame for the same reason.

Design of the encode loop: chunks wait in a small bounded queue; if encoding falls behind, the oldest
chunks are dropped and every encoder is asked for a key frame, so viewers resume cleanly.

A shared session keeps its recent prompt switches (``prompt_applied`` notices, and the first prompt): a
viewer joining late gets them replayed (marked ``"replay": true``) right after ``watching``, so it sees
what the stream shows now and how it got there; ``GET /streams`` names each stream by its current prompt.

Viewers come over the WebSocket (``streaming/transports/ws.py``: frames written as they are) or WebRTC
(``streaming/transports/webrtc_viewer.py``: the same frames' payloads packetized into RTP, released on
their pts). A viewer whose decoder lost a picture (a WebRTC receiver's RTCP PLI/FIR) asks for a key frame
with :meth:`Broadcast.request_keyframe`; such requests are rate-limited per encoder, because a key frame
goes to every viewer of that codec choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from concurrent.futures import Executor
from typing import Any

from models.errors import ProtocolError
from streaming.media.wire import WireEncoder, WireFrame
from streaming.outbox import Outbox
from streaming.protocol import AudioCodec, MediaKind, VideoCodec
from streaming.session import OutputChunk, Session

log = logging.getLogger(__name__)

PRIVATE_NOTICES = frozenset({"stats", "error", "stopped"})  # the producer's own business
MAX_PROMPT_HISTORY = 32  # prompt switches replayed to a joining viewer (its control queue holds 64 messages)


class Viewer:
    """One watcher: an :class:`~streaming.outbox.Outbox` of protocol frames and notices, drained by its transport."""

    def __init__(self, audio_codec: AudioCodec, video_codec: VideoCodec, max_frames: int) -> None:
        self.codecs = (audio_codec, video_codec)
        self.max_frames = max_frames
        self.num_dropped = 0
        self.end_reason: str | None = None
        self._queue: Outbox[bytes] = Outbox(max_frames, max_control=64)
        self._needs_key = True  # video starts (and resumes after drops) at a key frame

    @property
    def num_queued(self) -> int:
        """Frames waiting for the transport."""
        return self._queue.num_media

    def push(self, frames: list[WireFrame]) -> bool:
        """Queue encoded frames; returns False when frames were dropped (a key frame is then needed)."""
        ok = True
        for frame in frames:
            if self._queue.media_full:  # too slow: drop the backlog, resume video at a key frame
                self.num_dropped += self._queue.clear_media()
                self._needs_key, ok = True, False
            if frame.kind is MediaKind.VIDEO:
                if self._needs_key and not frame.key:
                    continue
                self._needs_key = False
            self._queue.put_media(frame.data)
        return ok

    def push_control(self, message: dict[str, Any]) -> None:
        """Queue a notice; it overtakes queued media."""
        self._queue.put_control(message)

    def end(self, reason: str) -> None:
        """No more items: the stream ended or the viewer left."""
        self.end_reason = self.end_reason or reason
        self._queue.close()

    async def get(self) -> bytes | dict[str, Any] | None:
        """Next notice or frame; None once ended and drained."""
        return await self._queue.get()


class Broadcast:
    """Taps one shared session and fans its output out to viewers."""

    def __init__(self, session: Session, codec_pool: Executor, *, max_viewers: int, max_pending_s: float = 1.0,
                 viewer_queue_frames: int = 128, min_keyframe_interval_s: float = 0.25) -> None:
        self.session = session
        self.min_keyframe_interval_s = min_keyframe_interval_s
        self.codec_pool = codec_pool
        self.max_viewers = max_viewers
        self.viewer_queue_frames = viewer_queue_frames
        self.viewers: set[Viewer] = set()
        self._encoders: dict[tuple[AudioCodec, VideoCodec], WireEncoder] = {}
        self._chunks: deque[OutputChunk] = deque(maxlen=max(2, round(max_pending_s / session.spec.chunk_s)))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.num_encoded_chunks = 0  # per codec choice: what viewers cost in encoding
        self.num_dropped_chunks = 0  # chunks skipped because encoding fell behind
        self.num_keyframe_requests = 0  # viewers' requests that forced a key frame
        self._last_key_request: dict[tuple[AudioCodec, VideoCodec], float] = {}
        # the stream's prompt switches so far, for viewers who join later
        self.prompt_history: deque[dict[str, Any]] = deque(maxlen=MAX_PROMPT_HISTORY)
        first = session.params.get("prompt") if isinstance(session.params, dict) else None
        if isinstance(first, str):
            self.prompt_history.append({"type": "prompt_applied", "text": first, "frame": 0, "switch": "first prompt"})

    @property
    def current_prompt(self) -> str | None:
        """The prompt the stream shows now (None for a model without prompts)."""
        return self.prompt_history[-1]["text"] if self.prompt_history else None

    # -- viewers -------------------------------------------------------------------------------------
    def add_viewer(self, audio_codec: AudioCodec, video_codec: VideoCodec) -> Viewer:
        """Attach a viewer; its video starts at the next key frame."""
        if len(self.viewers) >= self.max_viewers:
            raise ProtocolError(f"session {self.session.id} already has {self.max_viewers} viewers", "capacity")
        viewer = Viewer(audio_codec, video_codec, self.viewer_queue_frames)
        for notice in self.prompt_history:  # queued behind the transport's `watching` reply
            viewer.push_control({**notice, "replay": True})
        key = viewer.codecs
        if key in self._encoders:
            self._encoders[key].request_keyframe()
        else:
            self._encoders[key] = WireEncoder(self.session.spec, audio_codec, video_codec)
        self.viewers.add(viewer)
        if self not in self.session.taps:
            self.session.taps.append(self)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"broadcast-{self.session.id}")
        return viewer

    def remove_viewer(self, viewer: Viewer) -> None:
        """Detach a viewer; encoders nobody uses any more are dropped."""
        self.viewers.discard(viewer)
        viewer.end("stopped watching")
        in_use = {v.codecs for v in self.viewers}
        for key in list(self._encoders):
            if key not in in_use:
                del self._encoders[key]

    def request_keyframe(self, viewer: Viewer) -> bool:
        """A viewer lost pictures: the next video frame of its codec choice is a key frame.

        At most one forced key frame per ``min_keyframe_interval_s`` per encoder (receivers repeat their
        requests, and every viewer of that codec choice pays for the key frame); returns whether this
        request forced one.
        """
        encoder = self._encoders.get(viewer.codecs)
        now = time.monotonic()
        if encoder is None or now - self._last_key_request.get(viewer.codecs, -math.inf) < self.min_keyframe_interval_s:
            return False
        self._last_key_request[viewer.codecs] = now
        encoder.request_keyframe()
        self.num_keyframe_requests += 1
        return True

    @property
    def codec_choices(self) -> set[tuple[AudioCodec, VideoCodec]]:
        """The (audio, video) codec choices encoded now: one encode per chunk each."""
        return set(self._encoders)

    def streams(self, viewer: Viewer) -> list[dict[str, Any]]:
        """Stream declarations for the viewer's `watching` message."""
        return self._encoders[viewer.codecs].streams()

    # -- the session tap -----------------------------------------------------------------------------
    def on_chunk(self, chunk: OutputChunk) -> None:
        """Queue a chunk for encoding (only while someone watches)."""
        if not self.viewers:
            return
        if len(self._chunks) == self._chunks.maxlen:  # encoding is behind: drop, then resume at a key frame
            self.num_dropped_chunks += 1
            for encoder in self._encoders.values():
                encoder.request_keyframe()
        self._chunks.append(chunk)
        self._wake.set()

    def on_notice(self, notice: dict[str, Any]) -> None:
        """Forward the model's public notices (e.g. prompt switches) to every viewer; remember prompt switches."""
        if notice.get("type") == "prompt_applied" and isinstance(notice.get("text"), str):
            self.prompt_history.append(notice)
        if notice.get("type") not in PRIVATE_NOTICES:
            for viewer in self.viewers:
                viewer.push_control(notice)

    def on_close(self, reason: str) -> None:
        """The producer ended: end every viewer after what is already queued."""
        for viewer in self.viewers:
            viewer.push_control({"type": "stream_ended", "session": self.session.id, "reason": reason})
            viewer.end(reason)
        self.viewers.clear()
        with contextlib.suppress(ValueError):
            self.session.taps.remove(self)
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            while not self._chunks:
                self._wake.clear()
                await self._wake.wait()
            chunk = self._chunks.popleft()
            encoders = list(self._encoders.items())
            # one encode per codec choice, the choices in parallel on the codec pool
            results = await asyncio.gather(*(encoder.encode(chunk, self.codec_pool) for _, encoder in encoders))
            self.num_encoded_chunks += len(encoders)
            for (key, encoder), frames in zip(encoders, results, strict=True):
                for viewer in [v for v in self.viewers if v.codecs == key]:
                    if not viewer.push(frames):
                        encoder.request_keyframe()


class BroadcastHub:
    """The shared sessions of a server, by id."""

    def __init__(self, codec_pool: Executor, max_viewers_per_session: int = 64) -> None:
        self.codec_pool = codec_pool
        self.max_viewers_per_session = max_viewers_per_session
        self._shared: dict[str, Session] = {}
        self._broadcasts: dict[str, Broadcast] = {}

    def share(self, session: Session) -> None:
        """Make a running session watchable; its tap records prompt switches from now on (for late viewers)."""
        session.shared = True
        self._shared[session.id] = session
        broadcast = Broadcast(session, self.codec_pool, max_viewers=self.max_viewers_per_session)
        self._broadcasts[session.id] = broadcast
        session.taps.append(broadcast)

    def unshare(self, session: Session) -> None:
        """Forget a session (it ended); its viewers were told by the tap."""
        self._shared.pop(session.id, None)
        self._broadcasts.pop(session.id, None)

    def shared_session(self, session_id: str) -> Session:
        """The running shared session by that id; raises ProtocolError (``unknown_session``) if there is none."""
        session = self._shared.get(session_id)
        if session is None or not session.running:
            raise ProtocolError(f"no shared session '{session_id}' is running", "unknown_session")
        return session

    def watch(self, session_id: str, audio_codec: AudioCodec, video_codec: VideoCodec) -> tuple[Broadcast, Viewer]:
        """Attach a viewer to a shared session; raises ProtocolError if there is none by that id."""
        session = self.shared_session(session_id)
        broadcast = self._broadcasts.get(session_id)
        if broadcast is None:
            broadcast = Broadcast(session, self.codec_pool, max_viewers=self.max_viewers_per_session)
            self._broadcasts[session_id] = broadcast
        return broadcast, broadcast.add_viewer(audio_codec, video_codec)

    def broadcast(self, session_id: str) -> Broadcast | None:
        """The broadcast of a shared session, once someone has watched it (None before)."""
        return self._broadcasts.get(session_id)

    def num_viewers(self, session_id: str) -> int:
        """Viewers attached to a session's broadcast now."""
        broadcast = self._broadcasts.get(session_id)
        return len(broadcast.viewers) if broadcast else 0

    def describe(self) -> list[dict[str, Any]]:
        """Shared sessions, their viewer counts and current prompts, for GET /streams."""
        out = []
        for session_id, session in self._shared.items():
            broadcast = self._broadcasts.get(session_id)
            viewers = len(broadcast.viewers) if broadcast else 0
            entry = {"session": session_id, "model": session.model, "viewers": viewers}
            if broadcast is not None and broadcast.current_prompt is not None:
                entry["prompt"] = broadcast.current_prompt
            out.append(entry)
        return out
