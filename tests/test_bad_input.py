"""Bad input gets a clear error and loses nothing; a vanishing client leaks nothing; others keep running."""

from __future__ import annotations

import asyncio
import gc
import json
import threading

import aiohttp
import numpy as np
import pytest

from streaming.client import Client, MediaCollector, ServerError
from streaming.protocol import AudioCodec, MediaKind, VideoCodec, pack_media

from streaming_helpers import Received, collect_until, roundtrip, stuck_client, tone

RATE = 16_000


async def error_after(client: Client, payload: str | bytes) -> dict:
    if isinstance(payload, bytes):
        await client.ws.send_bytes(payload)
    else:
        await client.ws.send_str(payload)
    return await client.expect("error")


async def test_malformed_control_messages_get_clear_errors(start_server):
    server = await start_server(("pitch",))
    async with Client(server.ws_url) as client:
        assert (await error_after(client, "{not json"))["code"] == "bad_message"
        assert (await error_after(client, "[1, 2]"))["code"] == "bad_message"
        assert (await error_after(client, json.dumps({"no": "type"})))["code"] == "bad_message"
        assert (await error_after(client, json.dumps({"type": "dance"})))["code"] == "not_started"
        assert (await error_after(client, json.dumps({"type": "stop"})))["code"] == "not_started"
        start = {"type": "start", "model": "nope"}
        error = await error_after(client, json.dumps(start))
        assert error["code"] == "unknown_model" and "pitch" in error["message"]
        error = await error_after(client, json.dumps({"type": "start", "model": "pitch", "protocol": 99}))
        assert "protocol" in error["message"]
        error = await error_after(client, json.dumps({"type": "start", "model": "pitch", "params": {"semitones": "x"}}))
        assert error["code"] == "bad_params" and "semitones" in error["message"]
        error = await error_after(client, json.dumps({"type": "start", "model": "pitch", "params": {"speed": 2}}))
        assert error["code"] == "bad_params" and "speed" in error["message"]
        bad_rate = {"type": "start", "model": "pitch", "input": {"sample_rate_hz": 12345}}
        error = await error_after(client, json.dumps(bad_rate))
        assert error["code"] == "bad_sample_rate" and "12345" in error["message"]
        # after all that, the same connection still works
        await client.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        assert (await error_after(client, json.dumps({"type": "dance"})))["code"] == "unknown_type"
        error = await error_after(client, json.dumps({"type": "start", "model": "pitch"}))
        assert "already running" in error["message"]
        got = await roundtrip(client, tone(300, 0.4), RATE, 320, 6400)
        assert len(got.collector.audio_samples()) == 6400


async def test_bad_binary_frames_get_clear_errors(start_server):
    server = await start_server(("pitch", "testcard"))
    pcm = (tone(300, 0.02) * 32767).astype(np.int16).tobytes()
    async with Client(server.ws_url) as client:
        frame = pack_media(MediaKind.AUDIO, AudioCodec.PCM16, 0, 0, 0, pcm)
        assert (await error_after(client, frame))["code"] == "not_started"
        await client.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        assert (await error_after(client, b"\x01\x01"))["code"] == "bad_frame"
        assert (await error_after(client, b"\x09" + frame[1:]))["code"] == "bad_frame"
        video = pack_media(MediaKind.VIDEO, VideoCodec.VP8, 0, 0, 0, b"\x00" * 10)
        assert "PCM16" in (await error_after(client, video))["message"]
        odd = pack_media(MediaKind.AUDIO, AudioCodec.PCM16, 0, 1, 0, b"\x00\x01\x02")
        assert "odd" in (await error_after(client, odd))["message"]
        got = await roundtrip(client, tone(300, 0.4), RATE, 320, 6400)
        assert np.abs(got.collector.audio_samples()).max() > 0.1
    async with Client(server.ws_url) as client:
        await client.start("testcard", video="jpeg")
        error = await error_after(client, frame)
        assert error["code"] == "bad_frame" and "no audio input" in error["message"]
        with pytest.raises(ServerError, match="takes no audio input"):
            await client.stop()
            await client.start("testcard", input_sample_rate_hz=RATE)


async def test_oversized_message_is_refused_with_a_clean_close(start_server):
    server = await start_server(("pitch",), max_message_bytes=64 * 1024)
    async with Client(server.ws_url) as client:
        await client.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        await client.ws.send_bytes(pack_media(MediaKind.AUDIO, AudioCodec.PCM16, 0, 0, 0, b"\x00" * 100_000))
        with pytest.raises(ConnectionError):  # a clean close with the standard "message too big" code
            while True:
                await client.receive(timeout=5)
        assert client.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    async with Client(server.ws_url) as client:  # the server keeps serving
        await client.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")


async def test_gaps_and_bursts_in_client_audio_keep_the_timeline(start_server):
    server = await start_server(("pitch",))
    async with Client(server.ws_url) as client:
        await client.start("pitch", {"semitones": 0}, input_sample_rate_hz=RATE, audio="pcm16")
        audio = tone(300, 1.0)
        # send 0.5 s, skip 0.1 s of pts (lost frames), resend an overlapping frame, then the rest in a burst
        await client.send_audio(audio[:8000], pts=0)
        await client.send_audio(audio[9600:11200], pts=9600)
        await client.send_audio(audio[10000:12000], pts=10000)  # overlaps 1200 already-sent samples
        await client.send_audio(audio[12000:], pts=12000)
        stats_seen = []
        total = 0
        while total < len(audio):
            item = await client.receive()
            if isinstance(item, dict):
                stats_seen.append(item)
            else:
                total += len(item.payload) // 2
        assert total == len(audio)  # the gap became 0.1 s of silence, the overlap was trimmed
        stats = await client.expect("stats")
        assert stats["input_gap_ms"] == pytest.approx(100.0)


async def test_vanishing_clients_leak_nothing(start_server):
    server = await start_server(("pitch",))
    engine = server.engine
    pitch = engine.generators["pitch"]
    baseline_tasks = len(asyncio.all_tasks())
    baseline_threads = threading.active_count()
    pcm = tone(300, 0.02)
    for i in range(200):
        client = Client(server.ws_url)
        await client.connect()
        if i % 4:  # most vanish mid-stream, some right after connecting
            await client.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
            for _ in range(i % 3 + 1):
                await client.send_audio(pcm)
        await client.abort()
    for _ in range(100):  # the server notices the resets asynchronously
        if not engine.scheduler.sessions and engine.runner.num_states == 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    gc.collect()
    assert engine.scheduler.sessions == {}
    assert engine.runner.num_states == 0
    assert pitch._slots.num_used == 0
    assert len(asyncio.all_tasks()) <= baseline_tasks + 2
    assert threading.active_count() <= baseline_threads + 1
    async with Client(server.ws_url) as client:  # and it still serves
        await client.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        got = await roundtrip(client, tone(300, 0.2), RATE, 320, 3200)
        assert len(got.collector.audio_samples()) == 3200


async def test_slow_reader_is_bounded(start_server):
    """A client that never reads cannot grow server memory: a clock-paced session fills its bounded outbox and
    then pauses (no model work for output nobody takes); others keep being served."""
    server = await start_server(("testcard",))
    stuck = await stuck_client(server.port, {"type": "start", "model": "testcard", "output": {"video": "jpeg"}})
    try:
        session = None
        for _ in range(250):  # the socket buffers fill within seconds, then the outbox
            sessions = list(server.engine.scheduler.sessions.values())
            session = sessions[0] if sessions else None
            if session is not None and session.outbox.media_full:
                break
            await asyncio.sleep(0.1)
        assert session is not None and session.outbox.media_full
        produced = session.stats.chunks_out
        await asyncio.sleep(1.0)
        assert session.outbox.num_media == session.config.output_queue_chunks  # bounded
        assert session.stats.chunks_out <= produced + 1  # paused, not generating into the void
        assert session.running
        async with Client(server.ws_url) as client:  # others are served meanwhile
            ready = await client.start("testcard", video="jpeg")
            got = await collect_until(client, Received(MediaCollector(ready)), num_video=10)
            assert len(got.collector.video[1]) >= 10
    finally:
        stuck.close()
