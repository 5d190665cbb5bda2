"""Shared streams: many viewers watch one producer, encoded once per codec; late joiners start at a key frame."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from models.diagnostic.testcard import read_frame_number
from streaming.broadcast import BroadcastHub
from streaming.client import Client, MediaCollector, ServerError
from streaming.protocol import MediaKind
from streaming.server import BROADCASTS_KEY

from streaming_helpers import Received, collect_until, stuck_client


def broadcast_of(server, session_id):
    hub: BroadcastHub = server.app[BROADCASTS_KEY]
    return hub.broadcast(session_id)


async def test_viewers_share_one_encode_and_start_at_key_frames(start_server):
    server = await start_server(("testcard",))
    async with Client(server.ws_url) as producer:
        ready = await producer.start("testcard", video="vp8", share=True)
        sid = ready["session"]
        mine = Received(MediaCollector(ready))
        await collect_until(producer, mine, num_video=10)
        viewers = [Client(server.ws_url) for _ in range(4)]
        try:
            received = []
            for i, viewer in enumerate(viewers):
                await viewer.connect()
                watching = await viewer.watch(sid, video="vp8" if i < 3 else "jpeg")
                assert watching["session"] == sid and watching["model"] == "testcard"
                received.append(Received(MediaCollector(watching)))
            await asyncio.gather(*(collect_until(v, r, num_video=25) for v, r in zip(viewers, received, strict=True)))
            for r in received:
                video = [f for f in r.frames if f.kind is MediaKind.VIDEO]
                assert video[0].is_key  # decodable from the first frame: joined at a key frame
                numbers = [read_frame_number(f) for f in r.collector.video[1]]
                assert numbers[0] >= 10  # joined late, live
                assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gaps, in order
                assert len(r.collector.audio_samples()) > 0
            # encode once per codec choice: two choices (vp8, jpeg), whatever the number of viewers
            broadcast = broadcast_of(server, sid)
            assert broadcast.num_dropped_chunks == 0
            chunks_seen = max(read_frame_number(r.collector.video[1][-1]) for r in received)
            assert broadcast.num_encoded_chunks <= 2 * chunks_seen
            async with aiohttp.ClientSession() as http:
                streams = (await (await http.get(f"{server.http_url}/streams")).json())["streams"]
            assert streams == [{"session": sid, "model": "testcard", "viewers": 4}]
            # the producer's prompt switch reaches viewers as a notice
            await producer.send({"type": "prompt", "text": "a blue square"})
            for viewer in viewers:
                assert (await viewer.expect("prompt_applied"))["text"] == "a blue square"
            # a viewer leaving does not disturb the others
            assert (await viewers[0].stop())["session"] == sid
            await collect_until(viewers[1], received[1], num_video=len(received[1].collector.video[1]) + 5)
            # the producer ending ends every viewer
            await producer.stop()
            for viewer in viewers[1:]:
                ended = await viewer.expect("stream_ended")
                assert ended["session"] == sid
        finally:
            for viewer in viewers:
                await viewer.close()


async def test_watch_refuses_unshared_and_busy(start_server):
    server = await start_server(("testcard", "pitch"))
    async with Client(server.ws_url) as private, Client(server.ws_url) as other:
        ready = await private.start("testcard", video="jpeg")  # not shared
        with pytest.raises(ServerError) as e:
            await other.watch(ready["session"])
        assert e.value.code == "unknown_session"
        with pytest.raises(ServerError) as e:
            await other.watch("nope")
        assert e.value.code == "unknown_session"
        await other.start("pitch", input_sample_rate_hz=16000, audio="pcm16")
        with pytest.raises(ServerError, match="already running"):
            await other.watch(ready["session"])


async def test_a_viewer_that_never_reads_is_bounded(start_server):
    server = await start_server(("testcard",))
    async with Client(server.ws_url) as producer, Client(server.ws_url) as good:
        ready = await producer.start("testcard", video="jpeg", share=True)
        stuck = await stuck_client(server.port, {"type": "watch", "session": ready["session"],
                                                 "output": {"video": "jpeg"}})
        try:
            watching = await good.watch(ready["session"])
            got = Received(MediaCollector(watching))
            broadcast = broadcast_of(server, ready["session"])
            # keep watching with `good` while `stuck` reads nothing: once the socket buffers are full the
            # stuck viewer's queue fills and then drops its backlog (a few seconds)
            deadline = asyncio.get_running_loop().time() + 25
            while not any(v.num_dropped for v in broadcast.viewers):
                assert asyncio.get_running_loop().time() < deadline, "the stuck viewer's queue never filled"
                await collect_until(good, got, num_video=len(got.collector.video.get(1, [])) + 25)
            assert all(v.num_queued <= v.max_frames for v in broadcast.viewers)
            numbers = [read_frame_number(f) for f in got.collector.video[1]]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # the good viewer lost nothing
        finally:
            stuck.close()
