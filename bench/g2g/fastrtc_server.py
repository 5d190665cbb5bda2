"""The comparison server: the same pitch shifter (0 semitones) served by fastrtc as an AsyncStreamHandler.

Run by :func:`bench.g2g.servers.fastrtc_server` as ``python -m bench.g2g.fastrtc_server PORT LIMIT``
(fastrtc is a bench-only dependency: ``.venv/bin/pip install -e ".[bench]"``), so importing fastrtc here
at the top is fine: nothing else imports this module.
"""

from __future__ import annotations

import asyncio
import os
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastrtc import AsyncStreamHandler, Stream  # noqa: E402

from bench.g2g.common import MODEL_RATE  # noqa: E402
from models.base import StepInput  # noqa: E402
from models.diagnostic.pitch import PitchShifter  # noqa: E402
from streaming.transports import rtc_support  # noqa: E402

MODEL = PitchShifter()
CHUNK = 320  # 20 ms at the model rate


class PitchHandler(AsyncStreamHandler):
    """One fastrtc session of the pitch shifter: 20 ms chunks in, the same out."""

    def __init__(self) -> None:
        super().__init__(expected_layout="mono", output_sample_rate=MODEL_RATE, input_sample_rate=MODEL_RATE)
        self.state = MODEL.open_session(MODEL.validate_params({"semitones": 0}))
        self.pending = np.zeros(0, np.float32)
        self.queue: asyncio.Queue[tuple[int, np.ndarray]] = asyncio.Queue()

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        """Input PCM16 -> chunks -> the model -> the output queue."""
        _, array = frame
        self.pending = np.concatenate([self.pending, array.reshape(-1).astype(np.float32) / 32768])
        while len(self.pending) >= CHUNK:
            chunk, self.pending = self.pending[:CHUNK], self.pending[CHUNK:]
            out = MODEL.step([self.state], [StepInput(audio=chunk, num_valid_samples=CHUNK)], 1)[0].audio
            self.queue.put_nowait((MODEL_RATE, (np.clip(out, -1, 1) * 32767).astype(np.int16)[None, :]))

    async def emit(self) -> tuple[int, np.ndarray]:
        """The next output chunk."""
        return await self.queue.get()

    def copy(self) -> PitchHandler:
        """A fresh handler per session (fastrtc's contract)."""
        return PitchHandler()

    def shutdown(self) -> None:
        """The session ended."""
        MODEL.close_session(self.state)


def serve_fastrtc(port: int, concurrency_limit: int) -> None:
    """Serve :class:`PitchHandler` on 127.0.0.1 until killed."""
    stream = Stream(
        handler=PitchHandler(),
        modality="audio",
        mode="send-receive",
        rtc_configuration={"iceServers": []},
        server_rtc_configuration={"iceServers": []},
        concurrency_limit=concurrency_limit,
    )
    app = FastAPI()
    stream.mount(app)
    # Loopback-only host candidates for fastrtc's aiortc too (its offers come from 127.0.0.1 clients).
    rtc_support.set_process_host_addresses(["127.0.0.1"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    serve_fastrtc(int(sys.argv[1]), int(sys.argv[2]))
