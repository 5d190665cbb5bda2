"""Model `video` end to end: the real server on 127.0.0.1, the WebSocket client, prompt switches and a flood."""

import asyncio

import numpy as np
import pytest
import torch

from models.video.generator import VideoGenerator, default_checkpoint_exists
from models.video.scenes import COLOURS, detect_frame
from streaming.client import Client, MediaCollector
from streaming.protocol import MediaKind
from streaming.session import SessionConfig

pytestmark = pytest.mark.skipif(not default_checkpoint_exists(), reason="shipped video checkpoint missing")


async def _collect(client, collector, num_frames, notices, timeout=60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    start = sum(len(v) for v in collector.video.values())
    while sum(len(v) for v in collector.video.values()) - start < num_frames:
        item = await client.receive(timeout=max(0.1, deadline - asyncio.get_running_loop().time()))
        if isinstance(item, dict):
            notices.append(item)
        elif item.kind is MediaKind.VIDEO:
            collector.add(item)


def _colour_share(frames, colour):
    found = [detect_frame(f[::2, ::2])["colour"] for f in frames]  # served at 2x: detect at model scale
    return float(np.mean([c == colour for c in found]))


async def test_video_over_websocket_follows_prompt_switches_and_survives_a_flood(start_server):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = VideoGenerator(max_sessions=2)
    # a loaded CI machine may be slower than real time: produce well ahead of playout (admission control,
    # which refuses a session whose worst-case wait exceeds the lead, is not under test here)
    server = await start_server(("video",), generators={"video": generator}, max_utilization=100.0,
                                warmup_max_batch=1, session=SessionConfig(clock_lead_ms=4000.0))
    try:
        async with Client(server.ws_url) as client:
            ready = await client.start("video", {"prompt": "a large green circle moving right on a black background"},
                                       video="jpeg")
            assert ready["output_video"] == {"width": 128, "height": 128, "fps": 16.0}
            collector, notices = MediaCollector(ready), []
            await _collect(client, collector, 24, notices)
            await client.send({"type": "prompt", "text": "a large yellow circle moving right on a black background"})
            await _collect(client, collector, 32, notices)
            for i in range(100):  # a flood: the runtime rate-limits, the model coalesces, the stream goes on
                await client.send({"type": "prompt", "text": f"a large red square number {i}"})
                await asyncio.sleep(0.01)
            await client.send({"type": "prompt", "text": "a large blue circle moving right on a black background"})
            await _collect(client, collector, 48, notices)
            await client.stop()
        (frames,) = collector.video.values()  # the one video stream
        assert frames[0].shape == (128, 128, 3)
        applied = [n for n in notices if n.get("type") == "prompt_applied"]
        assert applied[0]["text"].startswith("a large yellow") and applied[-1]["text"].startswith("a large blue")
        assert len(applied) < 20  # coalesced: far fewer switches than events
        assert _colour_share(frames[8:24], "green") >= 0.6
        assert _colour_share(frames[40:56], "yellow") >= 0.6
        assert _colour_share(frames[-16:], "blue") >= 0.6
        assert set(COLOURS) >= {"green", "yellow", "blue"}
    finally:
        torch.set_num_threads(threads)
