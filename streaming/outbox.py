"""What a consumer drains toward one client: control messages first, then bounded media.

One queue type for every stream that leaves the server: a session's :class:`~streaming.session.Session`
outbox (output chunks for its own transport) and each shared-stream viewer's queue
(:class:`~streaming.broadcast.Viewer`, encoded frames). Control messages (notices, errors) overtake
queued media, as in pipecat's priority frames; media is bounded so a slow client costs memory up to a
fixed number of items, never more. What to drop when media is full is the owner's choice: the oldest item
(:meth:`Outbox.put_media`) or the whole backlog (:meth:`Outbox.clear_media`, then resume at a key frame).

Runs on the event loop; every method but :meth:`Outbox.get` is synchronous and cheap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Generic, TypeVar

M = TypeVar("M")


class Outbox(Generic[M]):
    """A control-before-media queue with bounded media and a bounded control backlog."""

    def __init__(self, max_media: int, max_control: int = 256) -> None:
        self._media: deque[M] = deque()
        self._control: deque[dict[str, Any]] = deque(maxlen=max_control)
        self.max_media = max_media
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def media_full(self) -> bool:
        """True when the consumer is not keeping up."""
        return len(self._media) >= self.max_media

    @property
    def num_media(self) -> int:
        """Media items waiting."""
        return len(self._media)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (items already queued are still delivered)."""
        return self._closed

    def put_media(self, item: M) -> bool:
        """Queue a media item; returns False if the oldest one had to be dropped to make room."""
        dropped = self.media_full
        if dropped:
            self._media.popleft()
        self._media.append(item)
        self._ready.set()
        return not dropped

    def put_control(self, message: dict[str, Any]) -> None:
        """Queue a control message; it is delivered before any queued media."""
        self._control.append(message)
        self._ready.set()

    def clear_media(self) -> int:
        """Discard queued media (barge-in, or a backlog a slow viewer cannot catch up); returns how many."""
        num = len(self._media)
        self._media.clear()
        return num

    def close(self) -> None:
        """No more items will come; :meth:`get` returns None once drained."""
        self._closed = True
        self._ready.set()

    async def get(self) -> M | dict[str, Any] | None:
        """Next item (control first), or None when closed and drained."""
        while True:
            if self._control:
                return self._control.popleft()
            if self._media:
                return self._media.popleft()
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
