"""An unfriendly WebSocket client, run as its own process (so its sending does not load the server's loop).

python tests/flood_client.py WS_URL SECONDS MODE  ->  one JSON line: what it sent and what came back.

Modes: ``ping`` (pings as fast as the socket takes them), ``keyframe`` (a testcard VP8 session, then
``request_keyframe`` as fast as possible), ``big`` (2 MiB JSON messages back to back). It reads everything
the server sends meanwhile, so it is a flooder, not a slow reader.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


async def flood(url: str, seconds: float, mode: str) -> dict:
    """Flood ``url`` for ``seconds``; returns counts of what was sent and received."""
    counts = {"sent": 0, "pongs": 0, "rate_limited": 0, "errors": 0, "key_frames": 0, "closed": False}
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, max_msg_size=8 * 1024 * 1024)

        async def read() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    message = json.loads(msg.data)
                    kind = message.get("type")
                    if kind == "pong":
                        counts["pongs"] += 1
                    elif kind == "error":
                        counts["rate_limited" if message.get("code") == "rate_limited" else "errors"] += 1
                elif msg.type is aiohttp.WSMsgType.BINARY and msg.data[0] == 2 and msg.data[3] & 1:
                    counts["key_frames"] += 1
            counts["closed"] = True

        reader = asyncio.create_task(read())
        if mode == "keyframe":
            await ws.send_str(json.dumps({"type": "start", "model": "testcard", "output": {"video": "vp8"}}))
        message = {"ping": '{"type": "ping"}', "keyframe": '{"type": "request_keyframe"}'}.get(mode)
        if mode == "big":
            message = json.dumps({"type": "no_such_type", "pad": "x" * (2 * 1024 * 1024 - 64)})
        end = time.monotonic() + seconds
        try:
            while (left := end - time.monotonic()) > 0 and not ws.closed:
                # waits only when the socket's buffers are full (the server reads slowly)
                await asyncio.wait_for(ws.send_str(message), left)
                counts["sent"] += 1
                if counts["sent"] % 64 == 0:
                    await asyncio.sleep(0)  # let the reader run
        except (ConnectionError, TimeoutError):
            pass
        await asyncio.sleep(0.5)  # what the server still sends
        reader.cancel()
        # vanish (a reset): a close handshake would wait behind everything still queued for the server
        connection = ws._response.connection
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
    return counts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(flood(sys.argv[1], float(sys.argv[2]), sys.argv[3]))), flush=True)
