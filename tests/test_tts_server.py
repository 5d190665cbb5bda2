"""TTS end to end: the real server on 127.0.0.1 and the WebSocket client; the shipped checkpoint speaks."""

import asyncio
import os
import shutil
import subprocess

import numpy as np
import pytest

from models.audio.dsp import read_wav, resample, trim_silence
from models.diagnostic.pitch import PitchShifter
from models.registry import load_model
from models.tts.generator import DEFAULT_CHECKPOINT, TTSGenerator
from streaming.client import Client, MediaCollector
from streaming.protocol import MediaFrame
from tests.streaming_helpers import LoopLag, Received, collect_until, send_paced, tone
from tests.tts_helpers import make_tiny_checkpoint, requires_espeak, run_session

SHIPPED = os.path.exists(DEFAULT_CHECKPOINT)

pytestmark = requires_espeak


@pytest.fixture(scope="module")
def tiny_gen(tmp_path_factory):
    return TTSGenerator(checkpoint=make_tiny_checkpoint(str(tmp_path_factory.mktemp("tts") / "t.safetensors")))


async def test_speaks_over_websocket_and_barge_in_stops_it(start_server, tiny_gen):
    server = await start_server(("tts",), generators={"tts": tiny_gen})
    async with Client(server.ws_url) as client:
        ready = await client.start("tts", params={"seed": 1}, audio="pcm16")
        assert "text" in ready["events"] and "interrupt" in ready["events"]
        got = Received(MediaCollector(ready))
        await client.send({"type": "text", "text": "Hello there, how are you today? " * 8, "final": True})
        await collect_until(client, got, num_samples=16_000, timeout=20)
        await client.send({"type": "interrupt"})
        await client.expect("interrupted")
        # after the interrupt no more than one chunk in flight may still arrive; then silence (idle)
        before = len(got.collector.audio_samples())
        extra = 0
        try:
            while True:
                item = await client.receive(timeout=0.6)
                if isinstance(item, MediaFrame):
                    extra += len(item.payload) // 2
        except (asyncio.TimeoutError, TimeoutError):
            pass
        assert extra <= 2 * tiny_gen.spec.output_chunk_samples, (before, extra)
        await client.stop()


async def test_bad_event_is_an_error_not_a_crash(start_server, tiny_gen):
    server = await start_server(("tts",), generators={"tts": tiny_gen})
    async with Client(server.ws_url) as client:
        ready = await client.start("tts", params={"seed": 1}, audio="pcm16")
        await client.send({"type": "set_voice", "voice": "nobody"})
        error = await client.expect("error")
        assert error["code"] == "bad_params" and not error["fatal"]
        await client.send({"type": "text", "text": "Still here.", "final": True})
        got = Received(MediaCollector(ready))
        await collect_until(client, got, num_samples=1600, timeout=20)
        await client.stop()


def test_registry_builds_tts_with_backend_option(tmp_path):
    path = make_tiny_checkpoint(str(tmp_path / "t.safetensors"))
    gen = load_model("tts", "cpu", {"checkpoint": path, "backend": "onnx"})
    assert gen.backend.name == "onnx"
    with pytest.raises(ValueError, match="backend"):
        load_model("tts", "cpu", {"checkpoint": path, "backend": "tpu"})


@pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoint")
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng command for the reference")
def test_shipped_checkpoint_speaks_a_held_out_sentence(tmp_path):
    """The shipped model speaks a sentence it never saw with the timing and loudness of its reference.

    What this proves: the checkpoint loads, aligns text to audio (duration within 0.6-1.8x of espeak-ng's
    rendering of the same sentence in the same voice, where a failed alignment babbles on to the cap or
    stops at once) and produces speech-like energy (loud over most of it, a pause at the comma). It does
    not prove intelligibility: bench/tts.py measures that (phoneme error rate by the VC content recognizer and
    pocketsphinx WER, each beside the espeak-ng reference's; docs/models/tts.md).
    """
    gen = TTSGenerator()
    voice = "v001"
    text = "Why did the angry pilot wait near the river, while the band played?"
    info = gen.voice_info[voice]
    wav = str(tmp_path / "ref.wav")
    subprocess.run(["espeak-ng", "-v", info["espeak_voice"], "-p", str(info["pitch"]), "-s", str(info["speed_wpm"]),
                    "-w", wav, text], check=True)
    ref, rate = read_wav(wav)
    ref = trim_silence(resample(ref, rate, 16_000), 16_000)
    audio = run_session(gen, [("text", {"text": text, "final": True})], {"seed": 0, "voice": voice})
    assert 0.6 < len(audio) / len(ref) < 1.8, (len(audio), len(ref))
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
    rms = np.sqrt((frames**2).mean(1))
    assert rms.max() > 0.02 and (rms > 0.1 * rms.max()).mean() > 0.4  # speech energy over most of it
    assert (rms < 0.1 * rms.max()).sum() >= 2  # and some pause (the comma, the segment gap)


async def test_a_text_flood_does_not_stall_other_sessions(start_server, tiny_gen):
    """20 messages of 150k characters from one session: the first is queued (cut now, phonemized a segment at a
    time as it is spoken), the rest are refused; a concurrent pitch session's chunks stay on time."""
    pitch = PitchShifter(chunk_ms=40.0)
    server = await start_server(("pitch", "tts"), generators={"pitch": pitch, "tts": tiny_gen})
    text = "The quick brown fox jumps over the lazy dog near the river bank today. " * 2100  # 149,100 characters
    audio = tone(220, 4.0)
    async with Client(server.ws_url) as monitor, Client(server.ws_url) as flooder:
        await monitor.start("pitch", {"semitones": 3}, input_sample_rate_hz=16_000, audio="pcm16")
        await flooder.start("tts", {"seed": 1}, audio="pcm16")
        sender = asyncio.create_task(send_paced(monitor, audio, 320, 16_000))
        await asyncio.sleep(0.5)
        with LoopLag() as lag:
            for _ in range(20):
                await flooder.send({"type": "text", "text": text})
            replies = []
            while len(replies) < 20:
                item = await flooder.receive(timeout=20)
                if isinstance(item, dict) and item["type"] in ("text_queued", "error"):
                    replies.append(item)
            await sender
        await asyncio.sleep(0.3)
        stopped = await monitor.stop()
        flooded = await flooder.stop()
    assert replies[0] == {"type": "text_queued", "segments": 4200}
    assert all(r["type"] == "error" and "waiting to be spoken" in r["message"] and not r["fatal"] for r in replies[1:])
    assert flooded["stats"]["chunks_out"] > 0  # the flooder's own session speaks
    assert lag.max_ms < 200, f"event loop lag {lag.max_ms:.0f} ms"
    stats = stopped["stats"]
    assert stats["chunks_out"] == len(audio) // 640 and stats["late_chunks"] <= 5, stats
