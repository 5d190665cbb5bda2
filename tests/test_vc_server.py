"""VC end to end: the real server on 127.0.0.1 with the WebSocket client; the shipped checkpoint converts.

The shipped-checkpoint tests measure what the model is for: converted held-out speech stays intelligible to
the content recognizer, and moves toward the target voice (resemblyzer, when installed), and silence stays
silence.
"""

import asyncio
import os
import time

import numpy as np
import pytest

from models.vc.generator import DEFAULT_CHECKPOINT, VCGenerator
from streaming.client import Client, MediaCollector
from tests.streaming_helpers import Received, collect_until, send_paced
from tests.vc_helpers import make_tiny_checkpoint, run_session, speechlike, wav_b64

SHIPPED = os.path.exists(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def tiny_gen(tmp_path_factory):
    return VCGenerator(checkpoint=make_tiny_checkpoint(str(tmp_path_factory.mktemp("vc") / "t.safetensors")))


async def test_converts_over_websocket_with_a_live_voice_change(start_server, tiny_gen):
    server = await start_server(("vc",), generators={"vc": tiny_gen})
    audio = speechlike(3.2, 1)
    async with Client(server.ws_url) as client:
        ready = await client.start("vc", params={"voice": "low", "seed": 1}, audio="pcm16")
        assert {"set_reference", "set_steps"} <= set(ready["events"])
        got = Received(MediaCollector(ready))
        sender = asyncio.create_task(send_paced(client, audio[:25_600], 320, 16_000))
        await collect_until(client, got, num_samples=20_480, timeout=30)
        await sender
        await client.send({"type": "set_reference", "reference_audio": wav_b64(speechlike(4.0, 7, 250.0))})
        await client.send({"type": "set_reference", "voice": "nobody"})
        # bursts and gaps: the rest arrives at once after a pause; the runtime re-times it (and reports what it
        # dropped), the model converts every chunk it is given
        await asyncio.sleep(0.5)
        await client.send_audio(audio[25_600:])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            item = await client.receive(timeout=5)
            if isinstance(item, dict):
                got.controls.append(item)
                if item["type"] == "stats" and item["chunks_out"] == item["chunks_in"] >= 12:
                    break
            else:
                got.collector.add(item)
        stats = got.controls[-1]
        assert stats["type"] == "stats" and len(got.collector.audio_samples()) == 2560 * stats["chunks_out"]
        kinds = [c.get("type") for c in got.controls]
        assert "reference_set" in kinds
        errors = [c for c in got.controls if c.get("type") == "error"]
        assert errors and errors[0]["code"] == "bad_params" and not errors[0]["fatal"]
        out = got.collector.audio_samples()
        assert np.isfinite(out).all() and np.abs(out).max() > 0
        await client.stop()


async def test_a_bad_reference_at_start_is_refused_clearly(start_server, tiny_gen):
    server = await start_server(("vc",), generators={"vc": tiny_gen})
    async with Client(server.ws_url) as client:
        with pytest.raises(Exception, match="too short"):
            await client.start("vc", params={"reference_audio": wav_b64(speechlike(1.0, 3))}, audio="pcm16")


# -- the shipped checkpoint ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED:
        pytest.skip("no shipped checkpoint")
    return VCGenerator()


@pytest.fixture(scope="module")
def held_out():
    """Three sentences in an espeak-ng voice the model never saw (its variant is held out of training)."""
    from models.audio.dsp import read_wav

    path = os.path.join(os.path.dirname(__file__), "data", "vc_unseen_source.wav")
    if not os.path.exists(path):
        pytest.skip("no held-out test clip")
    audio, rate = read_wav(path)
    return audio


def test_shipped_checkpoint_converts_intelligibly_toward_the_target(shipped, held_out):
    from models.audio.phoneme_recognizer import PhonemeRecognizer

    recognizer = PhonemeRecognizer(model=shipped.model, symbols=shipped.symbols)
    voices = sorted(shipped._voices)
    out = run_session(shipped, held_out, {"voice": voices[0], "seed": 0})
    source_phones, out_phones = recognizer.recognize(held_out), recognizer.recognize(out)
    from models.vc.phonemes import phoneme_errors

    # intelligibility: what the recognizer hears in the converted speech is close to what it hears in the source
    assert phoneme_errors(source_phones, out_phones) / len(source_phones) < 0.5
    assert 0.02 < np.sqrt(np.mean(out**2)) < 0.5
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError:
        return
    enc = VoiceEncoder("cpu", verbose=False)
    emb = lambda x: enc.embed_utterance(preprocess_wav(x, source_sr=16_000))  # noqa: E731
    target = emb(shipped_reference_audio(shipped, voices[0]))
    converted, source = emb(out), emb(held_out)
    assert converted @ target - converted @ source > source @ target - source @ source + 0.05


def shipped_reference_audio(gen: VCGenerator, voice: str) -> np.ndarray:
    """The shipped voice's reference clip, vocoded from its stored log-mel is not possible: use its own output."""
    silence = np.zeros(16_000, np.float32)
    return run_session(gen, np.concatenate([silence, speechlike(4.0, 0), silence]), {"voice": voice, "seed": 0})


def test_shipped_checkpoint_silence_in_silence_out(shipped):
    out = run_session(shipped, np.zeros(32_000, np.float32), {"voice": sorted(shipped._voices)[0], "seed": 0})
    assert np.sqrt(np.mean(out**2)) < 0.01
