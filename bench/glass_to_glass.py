"""Glass-to-glass latency of causalcast's transports, side by side with fastrtc, and sessions held under load.

Markers (4 ms tone bursts, streaming/media/markers.py) go through the diagnostic pitch shifter at 0
semitones (a pure 15 ms delay, reported as ``model_delay_ms``) and are found again on return. Latency is
the time from a marker's sample on the sender's clock to the same sample on the receiver's clock: for the
Python clients, frames are stamped when they are handed to / come out of the transport; in Chromium, the
page's AudioWorklet records its synthetic microphone and what comes back on one AudioContext clock (so
the browser's jitter buffer and WebAudio path are included; sound-card buffers are not).

Every server runs as a subprocess on 127.0.0.1 (no ICE servers; candidates on 127.0.0.1 only). fastrtc
(PyPI ``fastrtc``, not a test dependency: ``.venv/bin/pip install -e ".[bench]"``) serves the same pitch
shifter as an ``AsyncStreamHandler``; its WebRTC client opens a data channel (fastrtc sends no audio
without one). Output: one JSON object per line.

    .venv/bin/python bench/glass_to_glass.py                      # everything available
    .venv/bin/python bench/glass_to_glass.py --markers 60 --load 1,2,4,8,16 --no-chromium
    .venv/bin/python bench/glass_to_glass.py --only-viewers --viewers 1,4,8   # shared streams only

Shared streams (``--viewers``): one WebRTC test-card producer with N WebRTC viewers, server and clients in
this process so the broadcast's counters can be read: encodes per chunk, frame latency from the model to
the decoded frame at each client, frames in order, and the A/V offset at the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streaming.client import Client  # noqa: E402
from streaming.client.webrtc import FRAME_SAMPLES, ArrayAudioTrack, RtcClient  # noqa: E402
from streaming.media.markers import marker_train, match_onsets, onset_times  # noqa: E402
from streaming.protocol import MediaKind  # noqa: E402
from streaming.transports.rtc_support import mono_samples  # noqa: E402

RATE = 48_000
MODEL_RATE = 16_000
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def summarize(delays_s: list[float], sent: int, model_delay_ms: float) -> dict[str, Any]:
    if not delays_s:
        return {"markers_sent": sent, "markers_received": 0}
    ms = np.array(delays_s) * 1000
    return {
        "markers_sent": sent,
        "markers_received": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "min_ms": round(float(ms.min()), 1),
        "max_ms": round(float(ms.max()), 1),
        "model_delay_ms": round(model_delay_ms, 1),
        "transport_p50_ms": round(float(np.percentile(ms, 50)) - model_delay_ms, 1),
    }


def pitch_model_delay_ms() -> float:
    """The pitch shifter's own delay at 0 semitones, measured offline on the same markers."""
    from models.base import StepInput
    from models.diagnostic.pitch import PitchShifter

    model = PitchShifter()
    state = model.open_session(model.validate_params({"semitones": 0}))
    signal, _ = marker_train(MODEL_RATE, 5, 0.25)
    chunks = [signal[i : i + 320] for i in range(0, len(signal) - 320, 320)]
    out = [model.step([state], [StepInput(audio=c, num_valid_samples=320)], 1)[0].audio for c in chunks]
    sent = onset_times([(i * 0.02, c) for i, c in enumerate(chunks)], MODEL_RATE)
    back = onset_times([(i * 0.02, c) for i, c in enumerate(out)], MODEL_RATE)
    return float(np.median(match_onsets(sent, back))) * 1000


# -- servers ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def subprocess_server(argv: list[str], port: int, name: str) -> Iterator[str]:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log: {log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; log: {log.name}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def causalcast_server(port: int, extra: list[str] | None = None) -> contextlib.AbstractContextManager[str]:
    argv = [sys.executable, "-m", "streaming", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "WARNING", "--ice-loopback-only"]
    return subprocess_server(argv + (extra or []), port, "causalcast")


def fastrtc_server(port: int, concurrency_limit: int) -> contextlib.AbstractContextManager[str]:
    argv = [sys.executable, __file__, "--serve-fastrtc", str(port), "--concurrency-limit", str(concurrency_limit)]
    return subprocess_server(argv, port, "fastrtc")


def serve_fastrtc(port: int, concurrency_limit: int) -> None:
    """Serve the same pitch shifter (semitones 0) with fastrtc as an AsyncStreamHandler (in a subprocess)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import uvicorn
    from fastapi import FastAPI
    from fastrtc import AsyncStreamHandler, Stream

    from models.base import StepInput
    from models.diagnostic.pitch import PitchShifter

    model = PitchShifter()

    class PitchHandler(AsyncStreamHandler):
        def __init__(self) -> None:
            super().__init__(expected_layout="mono", output_sample_rate=MODEL_RATE, input_sample_rate=MODEL_RATE)
            self.state = model.open_session(model.validate_params({"semitones": 0}))
            self.pending = np.zeros(0, np.float32)
            self.queue: asyncio.Queue[tuple[int, np.ndarray]] = asyncio.Queue()

        async def receive(self, frame: tuple[int, np.ndarray]) -> None:
            _, array = frame
            self.pending = np.concatenate([self.pending, array.reshape(-1).astype(np.float32) / 32768])
            while len(self.pending) >= 320:
                chunk, self.pending = self.pending[:320], self.pending[320:]
                out = model.step([self.state], [StepInput(audio=chunk, num_valid_samples=320)], 1)[0].audio
                self.queue.put_nowait((MODEL_RATE, (np.clip(out, -1, 1) * 32767).astype(np.int16)[None, :]))

        async def emit(self) -> tuple[int, np.ndarray]:
            return await self.queue.get()

        def copy(self) -> PitchHandler:
            return PitchHandler()

        def shutdown(self) -> None:
            model.close_session(self.state)

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
    from streaming.transports import rtc_support

    # Loopback-only host candidates for fastrtc's aiortc too (its offers come from 127.0.0.1 clients).
    rtc_support.set_process_host_addresses(["127.0.0.1"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- Python clients ----------------------------------------------------------------------------------------
async def webrtc_python(
    base_url: str, num_markers: int, period_s: float, *, fastrtc: bool = False, prefetch: int = 0
) -> tuple[list[float], int]:
    signal, _ = marker_train(RATE, num_markers, period_s)
    track = ArrayAudioTrack(signal)
    client = RtcClient(base_url, offer_path="/webrtc/offer" if fastrtc else "/offer", audio_prefetch=prefetch)
    received: list[tuple[float, np.ndarray]] = []
    try:
        extra = {"webrtc_id": uuid.uuid4().hex} if fastrtc else None
        await client.connect("pitch", {"semitones": 0}, audio=track, extra=extra)
        await client.wait_connected(20)
        end = time.monotonic() + len(signal) / RATE + 1.0
        while (left := end - time.monotonic()) > 0:
            try:
                arrival, frame = await asyncio.wait_for(client.audio_frames.get(), left)
            except TimeoutError:
                break
            received.append((arrival, mono_samples(frame)))
    finally:
        await client.close()
    sent = [(t, signal[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i, t in enumerate(track.sent_at)]
    sent_times = onset_times(sent, RATE)
    return match_onsets(sent_times, onset_times(received, RATE)), len(sent_times)


async def ws_python(base_url: str, num_markers: int, period_s: float) -> tuple[list[float], int]:
    """The causalcast WebSocket protocol, PCM16 both ways at the model rate, sent on a drift-free clock."""
    signal, _ = marker_train(MODEL_RATE, num_markers, period_s)
    frame = 320
    sent: list[tuple[float, np.ndarray]] = []
    received: list[tuple[float, np.ndarray]] = []
    async with Client(base_url.replace("http://", "ws://") + "/ws") as client:
        await client.start("pitch", {"semitones": 0}, input_sample_rate_hz=MODEL_RATE, audio="pcm16")

        async def receive() -> None:
            while True:
                item = await client.receive(timeout=None)
                if not isinstance(item, dict) and item.kind is MediaKind.AUDIO:
                    pcm = np.frombuffer(item.payload, "<i2").astype(np.float32) / 32768
                    received.append((time.monotonic(), pcm))

        task = asyncio.create_task(receive())
        start = time.monotonic()
        for i in range(0, len(signal) - frame + 1, frame):
            due = start + i / MODEL_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            chunk = signal[i : i + frame]
            sent.append((time.monotonic(), chunk))
            await client.send_audio(chunk)
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
    sent_times = onset_times(sent, MODEL_RATE)
    return match_onsets(sent_times, onset_times(received, MODEL_RATE)), len(sent_times)


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 mu-law bytes of int16 samples (what fastrtc's WebSocket protocol carries)."""
    x = pcm.astype(np.int32)
    sign = (x < 0).astype(np.int32)
    x = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(x)).astype(np.int32) - 7, 0, 7)
    mantissa = (x >> (exponent + 3)) & 0x0F
    return (~((sign << 7) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """Int16 samples of G.711 mu-law bytes, as float32."""
    u = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0x0F
    x = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -x, x).astype(np.float32) / 32768


async def fastrtc_ws_python(base_url: str, num_markers: int, period_s: float) -> tuple[list[float], int]:
    """Round trips over fastrtc's WebSocket protocol (JSON events, base64 mu-law at the handler's rate)."""
    import aiohttp

    signal, _ = marker_train(MODEL_RATE, num_markers, period_s)
    frame = 320
    sent: list[tuple[float, np.ndarray]] = []
    received: list[tuple[float, np.ndarray]] = []
    url = base_url.replace("http://", "ws://") + "/websocket/offer"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json({"event": "start", "websocket_id": uuid.uuid4().hex})

        async def receive() -> None:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                if event.get("event") == "media":
                    received.append((time.monotonic(), ulaw_decode(base64.b64decode(event["media"]["payload"]))))

        task = asyncio.create_task(receive())
        start = time.monotonic()
        for i in range(0, len(signal) - frame + 1, frame):
            await asyncio.sleep(max(0.0, start + i / MODEL_RATE - time.monotonic()))
            chunk = signal[i : i + frame]
            sent.append((time.monotonic(), chunk))
            pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
            await ws.send_json({"event": "media", "media": {"payload": base64.b64encode(ulaw_encode(pcm)).decode()}})
        await asyncio.sleep(1.0)
        await ws.send_json({"event": "stop"})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    sent_times = onset_times(sent, MODEL_RATE)
    return match_onsets(sent_times, onset_times(received, MODEL_RATE), max_delay_s=5.0), len(sent_times)


def growth_ms(delays_s: list[float]) -> float:
    """Median latency of the last quarter of markers minus that of the first quarter."""
    if len(delays_s) < 4:
        return 0.0
    q = len(delays_s) // 4
    return round(float(np.median(delays_s[-q:]) - np.median(delays_s[:q])) * 1000, 1)


# -- Chromium ----------------------------------------------------------------------------------------------
def chromium_available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


def chromium_round_trip(base_url: str, transport: str, num_markers: int, period_s: float) -> tuple[list[float], int]:
    """The page's synthetic microphone (markers) and what comes back, recorded on one AudioContext clock."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="g2g-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    ):  # fmt: skip
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    seconds = num_markers * period_s
    try:
        driver.set_script_timeout(seconds + 60)
        driver.get(base_url + "/")
        driver.execute_async_script("causalcast.ready.then(arguments[arguments.length - 1])")
        driver.execute_script(
            "causalcast.useMarkers(arguments[0], arguments[1]); causalcast.selectMode('voice');"
            "document.getElementById('voice').value = '0'; causalcast.setTransport(arguments[2]); causalcast.start();",
            num_markers + 20,
            period_s,
            transport,
        )
        deadline = time.monotonic() + 30
        while not driver.execute_script("return Boolean(causalcast.state().last.ready)"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"page did not start: {driver.execute_script('return causalcast.state()')}")
            time.sleep(0.1)
        time.sleep(1.0)
        result = driver.execute_async_script(
            "causalcast.record(arguments[0]).then(arguments[arguments.length - 1])", seconds
        )
        driver.execute_script("causalcast.stop()")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    rate = result["rate"]
    decode = lambda b: np.frombuffer(base64.b64decode(b), "<i2").astype(np.float32) / 32768  # noqa: E731
    sent, back = decode(result["input"]), decode(result["output"])
    sent_times = onset_times([(0.0, sent)], rate)
    return match_onsets(sent_times, onset_times([(0.0, back)], rate)), len(sent_times)


# -- load --------------------------------------------------------------------------------------------------
async def sessions_held(
    base_url: str, num: int, seconds: float, *, fastrtc: bool, transport: str, baseline_ms: float | None
) -> dict[str, Any]:
    """Run ``num`` sessions at once and judge whether they were held in real time.

    Held: none failed, <= 2 % of markers lost, latency did not grow during the run (the last quarter's
    median within 50 ms of the first quarter's, in every session), and p99 within 150 ms of this server's
    single-session median.
    """
    period = 0.5
    count = max(4, int(seconds / period))
    started = time.monotonic()
    if transport == "ws":
        runs = [ws_python(base_url, count, period) for _ in range(num)]
    else:
        runs = [webrtc_python(base_url, count, period, fastrtc=fastrtc) for _ in range(num)]
    results = await asyncio.gather(*runs, return_exceptions=True)
    delays: list[float] = []
    sent = failed = 0
    growth_ms = 0.0
    for r in results:
        if isinstance(r, BaseException):
            failed += 1
            continue
        delays += r[0]
        sent += r[1]
        quarter = max(1, len(r[0]) // 4)
        if len(r[0]) >= 4:
            growth_ms = max(growth_ms, (np.median(r[0][-quarter:]) - np.median(r[0][:quarter])) * 1000)
    lost = 1 - len(delays) / sent if sent else 1.0
    ms = np.array(delays) * 1000 if delays else np.array([np.inf])
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    reference = baseline_ms if baseline_ms is not None else p50
    held = bool(failed == 0 and lost <= 0.02 and growth_ms <= 50.0 and p99 <= reference + 150.0)
    return {
        "sessions": num,
        "failed_sessions": failed,
        "markers_lost_rate": round(lost, 4),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "latency_growth_ms": round(float(growth_ms), 1),
        "held": held,
        "wall_s": round(time.monotonic() - started, 1),
    }


# -- shared streams: one producer, many viewers --------------------------------------------------------------
class _ChunkTimes:
    """A session tap that notes when each output chunk was produced (by its first video pts)."""

    def __init__(self) -> None:
        self.produced: dict[int, float] = {}

    def on_chunk(self, chunk: Any) -> None:
        if chunk.video_pts:
            self.produced[chunk.video_pts[0]] = time.monotonic()

    def on_notice(self, notice: dict[str, Any]) -> None:
        pass

    def on_close(self, reason: str) -> None:
        pass


async def _collect(queue: asyncio.Queue, seconds: float) -> list[Any]:
    out, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            out.append(await asyncio.wait_for(queue.get(), left))
        except TimeoutError:
            break
    return out


async def shared_stream_run(num_viewers: int, seconds: float) -> dict[str, Any]:
    """A WebRTC test-card producer with ``num_viewers`` WebRTC viewers, in this process (white-box counters).

    Reports encodes per chunk (what viewers cost in encoding), frame latency from the chunk leaving the
    model to the decoded frame at the client (producer and viewers), frames in order, and the A/V offset
    (video minus audio arrival of the once-a-second beep and marker) at the clients.
    """
    from aiohttp import web

    from models.diagnostic.testcard import has_beep_marker, read_frame_number
    from streaming.client.onsets import av_offsets_ms, beep_onsets, marker_onsets
    from streaming.server import BROADCASTS_KEY, ENGINE_KEY, ServerConfig, create_app
    from streaming.transports.webrtc import RtcConfig

    config = ServerConfig(models=("testcard",), webrtc=RtcConfig(loopback_only=True))
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    producer = RtcClient(url)
    viewers = [RtcClient(url) for _ in range(num_viewers)]
    try:
        answer = await producer.connect("testcard", receive_audio=True, receive_video=True, extra={"share": True})
        await producer.wait_connected(10)
        session = next(s for s in runner.app[ENGINE_KEY].scheduler.sessions.values() if s.id == answer["session"])
        times = _ChunkTimes()
        session.taps.append(times)
        for viewer in viewers:
            await viewer.watch(answer["session"])
        await asyncio.gather(*(v.wait_connected(20) for v in viewers))
        await asyncio.sleep(1.0)  # every viewer joined and started at a key frame
        broadcast = runner.app[BROADCASTS_KEY]._broadcasts[answer["session"]]
        clients = [producer, *viewers]
        for client in clients:
            for queue in (client.audio_frames, client.video_frames):
                while not queue.empty():
                    queue.get_nowait()
        encoded0, chunks0 = broadcast.num_encoded_chunks, session.stats.chunks_out
        media = await asyncio.gather(*(_collect(q, seconds) for c in clients for q in (c.audio_frames, c.video_frames)))
        encodes_per_chunk = (broadcast.num_encoded_chunks - encoded0) / max(1, session.stats.chunks_out - chunks0)
        latency: dict[str, list[float]] = {"producer": [], "viewer": []}
        offsets: dict[str, list[float]] = {"producer": [], "viewer": []}
        gaps = 0
        for i in range(len(clients)):
            role = "producer" if i == 0 else "viewer"
            audio, video = media[2 * i], media[2 * i + 1]
            numbers = []
            for arrival, frame in video:
                number = read_frame_number(frame.to_ndarray(format="rgb24"))
                numbers.append(number)
                produced = times.produced.get(number * 3600)  # 25 fps: 3600 ticks of 90 kHz per frame
                if produced is not None:
                    latency[role].append(arrival - produced)
            gaps += sum(b != a + 1 for a, b in zip(numbers, numbers[1:], strict=False))
            offsets[role] += av_offsets_ms(beep_onsets(audio), marker_onsets(video, has_beep_marker))
        out: dict[str, Any] = {"bench": "shared_stream", "model": "testcard", "viewers": num_viewers,
                               "transport": "webrtc", "codec_choices": len(broadcast._encoders),
                               "encodes_per_chunk": round(encodes_per_chunk, 3), "frame_gaps": gaps,
                               "load_avg": os.getloadavg()[0]}  # fmt: skip
        for role in ("producer", "viewer"):
            if latency[role]:
                ms = np.array(latency[role]) * 1000
                out[f"{role}_frame_latency_ms_p50"] = round(float(np.percentile(ms, 50)), 1)
                out[f"{role}_frame_latency_ms_p99"] = round(float(np.percentile(ms, 99)), 1)
            if offsets[role]:
                av = np.array(offsets[role])
                out[f"{role}_av_offset_ms_median"] = round(float(np.median(av)), 1)
                out[f"{role}_av_offset_ms_max_abs"] = round(float(np.abs(av).max()), 1)
        return out
    finally:
        for client in viewers + [producer]:
            await client.close()
        await runner.cleanup()


async def shared_stream_runs(args: argparse.Namespace) -> None:
    for num in args.viewers:
        emit(await shared_stream_run(num, args.viewer_seconds))


# -- main --------------------------------------------------------------------------------------------------
def fastrtc_installed() -> bool:
    try:
        import fastrtc  # noqa: F401
    except Exception:
        return False
    return True


async def latency_runs(url: str, server: str, args: argparse.Namespace, model_ms: float) -> None:
    base = {"bench": "glass_to_glass", "server": server}
    if server == "causalcast":
        for prefetch in (0, 4):
            delays, sent = await webrtc_python(url, args.markers, args.period, prefetch=prefetch)
            client = "python-aiortc" + ("" if prefetch == 0 else "-default-jitter")
            emit({**base, "transport": "webrtc", "client": client, **summarize(delays, sent, model_ms)})
        delays, sent = await ws_python(url, args.markers, args.period)
        emit({**base, "transport": "ws", "client": "python", "latency_growth_ms": growth_ms(delays),
              **summarize(delays, sent, model_ms)})  # fmt: skip
        if args.chromium and chromium_available():
            for transport in ("webrtc", "ws"):
                delays, sent = await asyncio.to_thread(chromium_round_trip, url, transport, args.markers, args.period)
                emit({**base, "transport": transport, "client": "chromium", **summarize(delays, sent, model_ms)})
        elif args.chromium:
            emit({**base, "client": "chromium", "skipped": f"needs {CHROMIUM} and {CHROMEDRIVER}"})
    else:
        for prefetch in (0, 4):
            delays, sent = await webrtc_python(url, args.markers, args.period, fastrtc=True, prefetch=prefetch)
            client = "python-aiortc" + ("" if prefetch == 0 else "-default-jitter")
            emit({**base, "transport": "webrtc", "client": client, **summarize(delays, sent, model_ms)})
        delays, sent = await fastrtc_ws_python(url, args.markers, args.period)
        emit({**base, "transport": "ws", "client": "python", "latency_growth_ms": growth_ms(delays),
              **summarize(delays, sent, model_ms)})  # fmt: skip


async def load_runs(urls: dict[str, str], args: argparse.Namespace) -> None:
    """Sessions held as N grows, each server/transport in turn at every N (same machine conditions)."""
    runs = [("causalcast", "webrtc"), ("fastrtc", "webrtc"), ("causalcast", "ws")]
    runs = [r for r in runs if r[0] in urls]
    baselines: dict[tuple[str, str], float] = {}
    for num in args.load:
        for server, transport in list(runs):
            result = await sessions_held(
                urls[server],
                num,
                args.load_seconds,
                fastrtc=server == "fastrtc",
                transport=transport,
                baseline_ms=baselines.get((server, transport)),
            )
            baselines.setdefault((server, transport), result["p50_ms"])
            emit({"bench": "sessions_held", "server": server, "transport": transport, **result})
            if not result["held"]:
                runs.remove((server, transport))


async def soak_runs(url: str, seconds: float, model_ms: float) -> None:
    """Send one marker a second for ``seconds`` per transport, to see whether latency drifts."""
    count = int(seconds)
    for transport in ("ws", "webrtc"):
        run = ws_python if transport == "ws" else webrtc_python
        delays, sent = await run(url, count, 1.0)
        minute = min(60, max(1, len(delays) // 4))
        first, last = np.median(delays[:minute]) * 1000, np.median(delays[-minute:]) * 1000
        emit(
            {
                "bench": "soak",
                "server": "causalcast",
                "transport": transport,
                "client": "python",
                "seconds": seconds,
                "first_minute_p50_ms": round(float(first), 1),
                "last_minute_p50_ms": round(float(last), 1),
                "drift_ms": round(float(last - first), 1),
                **summarize(delays, sent, model_ms),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markers", type=int, default=60, help="markers per latency run (>= 50 for p99)")
    parser.add_argument("--period", type=float, default=0.25, help="seconds between markers")
    parser.add_argument("--load", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    parser.add_argument("--load-seconds", type=float, default=8.0)
    parser.add_argument("--no-chromium", dest="chromium", action="store_false")
    parser.add_argument("--soak-s", type=float, default=0.0, help="also run one long WS + WebRTC session (drift)")
    parser.add_argument("--no-fastrtc", dest="fastrtc", action="store_false")
    parser.add_argument("--serve-fastrtc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency-limit", type=int, default=64, help="fastrtc's (integer) concurrency_limit")
    parser.add_argument("--viewers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8],
                        help="shared-stream runs: WebRTC viewers of one test-card producer")  # fmt: skip
    parser.add_argument("--viewer-seconds", type=float, default=8.0)
    parser.add_argument("--only-viewers", action="store_true", help="only the shared-stream runs")
    args = parser.parse_args()
    if args.serve_fastrtc:
        serve_fastrtc(args.serve_fastrtc, args.concurrency_limit)
        return
    if args.only_viewers:
        asyncio.run(shared_stream_runs(args))
        return
    model_ms = pitch_model_delay_ms()
    emit({"bench": "setup", "model": "pitch", "semitones": 0, "model_delay_ms": round(model_ms, 2),
          "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()})  # fmt: skip
    with contextlib.ExitStack() as servers:
        urls = {"causalcast": servers.enter_context(causalcast_server(free_port()))}
        asyncio.run(latency_runs(urls["causalcast"], "causalcast", args, model_ms))
        if args.soak_s:
            asyncio.run(soak_runs(urls["causalcast"], args.soak_s, model_ms))
        if not args.fastrtc:
            pass
        elif not fastrtc_installed():
            emit({"bench": "glass_to_glass", "server": "fastrtc", "skipped": "fastrtc is not installed "
                  "(.venv/bin/pip install -e '.[bench]'; it is a bench-only dependency)"})  # fmt: skip
        else:
            urls["fastrtc"] = servers.enter_context(fastrtc_server(free_port(), args.concurrency_limit))
            asyncio.run(latency_runs(urls["fastrtc"], "fastrtc", args, model_ms))
        asyncio.run(load_runs(urls, args))
    asyncio.run(shared_stream_runs(args))


if __name__ == "__main__":
    main()
