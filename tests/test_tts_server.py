"""TTS end to end: the real server on 127.0.0.1 and the WebSocket client; the shipped checkpoint speaks."""

import asyncio
import os

import numpy as np
import pytest

from models.registry import load_model
from models.tts.generator import DEFAULT_CHECKPOINT, TTSGenerator
from streaming.client import Client, MediaCollector
from streaming.protocol import MediaFrame
from tests.streaming_helpers import Received, collect_until
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
def test_shipped_checkpoint_speaks_a_held_out_sentence():
    """Duration, energy and voicing are speech-like, and (with pocketsphinx) most words are recognized.

    The sentence is not in the training corpus (it comes from the held-out split's grammar, fixed here).
    """
    gen = TTSGenerator()
    text = "Why did the angry pilot wait near the river?"
    audio = run_session(gen, [("text", {"text": text, "final": True})], {"seed": 0, "voice": "v001"})
    seconds = len(audio) / 16_000
    assert 1.2 < seconds < 6.0, seconds
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
    rms = np.sqrt((frames**2).mean(1))
    assert rms.max() > 0.02 and (rms > 0.1 * rms.max()).mean() > 0.4  # speech energy over most of it
    try:
        from models.audio.recognizer import VocabularyRecognizer, words_of
    except ImportError:
        return
    vocab = set(words_of(text)) | {"the", "a", "river", "farmer", "painted", "boat", "why", "did", "leave", "market"}
    rec = VocabularyRecognizer(vocab)
    hyp = rec.transcribe(audio)
    assert rec.wer([(text, audio)]) <= 0.5, hyp
