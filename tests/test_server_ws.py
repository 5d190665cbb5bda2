"""End to end over the real server and WebSocket client: the diagnostic generators through the engine."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
import torch

from models.diagnostic.pitch import shift_pitch
from models.diagnostic.testcard import has_beep_marker, read_frame_number
from streaming.client import Client, MediaCollector, ServerError
from streaming.protocol import VIDEO_CLOCK_HZ, MediaKind

from streaming_helpers import Received, collect_until, dominant_hz, quantize, roundtrip, tone

RATE = 16_000
GRAIN = 480  # pitch model default: 30 ms at 16 kHz


def offline_pitch(samples: np.ndarray, semitones: float) -> np.ndarray:
    x = torch.from_numpy(quantize(samples))[None]
    ratio = torch.tensor([2 ** (semitones / 12)])
    return shift_pitch(torch.zeros(1, GRAIN + 1), x, torch.tensor([0]), ratio, GRAIN)[0].numpy()


async def test_five_seconds_in_five_seconds_out_in_order(start_server):
    server = await start_server(("pitch",))
    audio = tone(220, 5.0) + tone(330, 5.0, amplitude=0.2)
    async with Client(server.ws_url) as client:
        await client.start("pitch", {"semitones": 5}, input_sample_rate_hz=RATE, audio="pcm16")
        got = await roundtrip(client, audio, RATE, 320, len(audio))
        stopped = await client.stop()
    out = got.collector.audio_samples()
    assert len(out) == len(audio)  # 5 s in, 5 s out, nothing lost or duplicated
    # pts continuous and seq consecutive: no gaps, no reordering
    pts = [f.pts for f in got.frames]
    sizes = [len(f.payload) // 2 for f in got.frames]
    assert pts == list(np.cumsum([0] + sizes[:-1]))
    assert [f.seq for f in got.frames] == list(range(len(got.frames)))
    # the server's output is exactly the causal pitch shifter run offline over the whole input
    np.testing.assert_allclose(out, offline_pitch(audio, 5), atol=2 / 32768)
    assert stopped["stats"]["chunks_out"] == 250
    assert stopped["stats"]["late_chunks"] <= 5


async def test_two_clients_get_their_own_streams(start_server):
    server = await start_server(("pitch",))
    audio_a, audio_b = tone(200, 2.0), tone(300, 2.0, amplitude=0.3)

    async def run(audio, semitones):
        async with Client(server.ws_url) as client:
            await client.start("pitch", {"semitones": semitones}, input_sample_rate_hz=RATE, audio="pcm16")
            got = await roundtrip(client, audio, RATE, 320, len(audio))
            return got.collector.audio_samples()

    out_a, out_b = await asyncio.gather(run(audio_a, 7), run(audio_b, -3))
    np.testing.assert_allclose(out_a, offline_pitch(audio_a, 7), atol=2 / 32768)
    np.testing.assert_allclose(out_b, offline_pitch(audio_b, -3), atol=2 / 32768)


async def test_input_at_48k_is_resampled_and_shifted(start_server):
    server = await start_server(("pitch",))
    audio = tone(220, 2.0, rate_hz=48_000)
    async with Client(server.ws_url) as client:
        await client.start("pitch", {"semitones": 12}, input_sample_rate_hz=48_000, audio="opus")
        got = await roundtrip(client, audio, 48_000, 960, expect_samples=int(1.8 * 48_000))
    out = got.collector.audio_samples()  # Opus decodes at 48 kHz
    peak = dominant_hz(out[24_000:72_000], 48_000)
    # a delay-line shifter with a 30 ms grain lands within a grain-rate of the exact octave (440 Hz)
    assert 400 < peak < 480, peak
    assert all(f.kind is MediaKind.AUDIO for f in got.frames)


async def test_testcard_streams_video_and_audio_in_order(start_server):
    server = await start_server(("testcard",))
    for codec in ("vp8", "h264", "jpeg"):
        async with Client(server.ws_url) as client:
            ready = await client.start("testcard", audio="opus", video=codec)
            assert {s["kind"] for s in ready["streams"]} == {"audio", "video"}
            got = Received(MediaCollector(ready))
            await collect_until(client, got, num_video=30, timeout=10)
            frames = got.collector.video[1]
            numbers = [read_frame_number(f) for f in frames]
            assert numbers == list(range(len(numbers))), (codec, numbers)
            video_pts = [f.pts for f in got.frames if f.kind is MediaKind.VIDEO]
            assert video_pts[:3] == [0, VIDEO_CLOCK_HZ // 25, 2 * VIDEO_CLOCK_HZ // 25]
            assert has_beep_marker(frames[0]) and not has_beep_marker(frames[5])
            assert got.frames[[f.kind for f in got.frames].index(MediaKind.VIDEO)].is_key


async def test_prompt_event_reaches_the_model(start_server):
    server = await start_server(("testcard",))
    async with Client(server.ws_url) as client:
        ready = await client.start("testcard", video="jpeg")
        got = Received(MediaCollector(ready))
        await collect_until(client, got, num_video=5)
        await client.send({"type": "prompt", "text": "a red ball"})
        applied = await client.expect("prompt_applied")
        assert applied["text"] == "a red ball" and applied["frame"] >= 5
        await client.send({"type": "prompt", "text": ""})
        error = await client.expect("error")
        assert error["code"] == "bad_params" and not error["fatal"]
        await collect_until(client, got, num_video=applied["frame"] + 10)  # still streaming


async def test_healthz_and_metrics_show_sessions(start_server):
    server = await start_server(("pitch", "testcard"))
    async with aiohttp.ClientSession() as http, Client(server.ws_url) as client:
        health = await (await http.get(f"{server.http_url}/healthz")).json()
        assert health["status"] == "ok" and health["device"] == "cpu"
        statuses = {m["name"]: m["status"] for m in health["models"]}
        assert statuses["pitch"] == "loaded" and statuses["tts"] in {"unavailable", "available"}
        await client.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        await roundtrip(client, tone(200, 0.5), RATE, 320, 8000)
        health = await (await http.get(f"{server.http_url}/healthz")).json()
        assert health["engine"]["sessions"] == 1
        text = await (await http.get(f"{server.http_url}/metrics")).text()
        assert 'causalcast_sessions_active{model="pitch"} 1.0' in text
        produced = [ln for ln in text.splitlines() if ln.startswith('causalcast_chunks_produced_total{model="pitch"}')]
        assert produced and float(produced[0].split()[-1]) >= 25
        assert 'causalcast_step_seconds_bucket{le="0.005",model="pitch"}' in text
        assert "causalcast_batch_size_count" in text


async def test_admission_refuses_past_capacity_and_keeps_others_on_time(start_server):
    # Each session costs ~12 ms per 60 ms chunk. A chunk may wait for a turn in flight and then its own,
    # so two sessions (worst case 2 x 24 ms) fit the 60 ms allowance and a third (2 x 36 ms) does not.
    server = await start_server(("pitch:simulated_cost_ms=12,chunk_ms=60",))
    clients = [Client(server.ws_url) for _ in range(4)]
    for c in clients:
        await c.connect()
    try:
        for c in clients[:2]:
            await c.start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        audio = tone(250, 3.0)
        runs = [asyncio.create_task(roundtrip(c, audio, RATE, 960, len(audio))) for c in clients[:2]]
        await asyncio.sleep(0.5)
        with pytest.raises(ServerError) as refused:
            await clients[2].start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
        assert refused.value.code == "capacity"
        assert "capacity" in refused.value.message["message"] and "ms" in refused.value.message["message"]
        await asyncio.gather(*runs)
        stats = [(await c.stop())["stats"] for c in clients[:2]]
        for s in stats:
            assert s["chunks_out"] == 50
            assert s["late_chunks"] <= 0.05 * s["chunks_out"], s
        # capacity freed by the stopped sessions is available again
        await clients[3].start("pitch", input_sample_rate_hz=RATE, audio="pcm16")
    finally:
        for c in clients:
            await c.close()
