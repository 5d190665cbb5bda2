"""Pocket TTS on our modules equals the pocket-tts package: same config, random weights, text, voice, noise."""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.audio.dsp import resample, wav_bytes
from models.base import ControlEvent, apply_event, open_direct
from models.tts.pocket.checkpoint import PocketTTS
from models.tts.pocket.config import PocketConfig
from models.tts.pocket.generator import PocketGenerator
from models.tts.pocket.text import ChunkStream, TextRules, Tokenizer, split_chunks
from tests.pocket_helpers import package_model, release_tensors, tiny_config, train_tokenizer

pytest.importorskip("pocket_tts")

TEXT = "hello world, the quick brown fox."
LONG = ("Is this the real life? Is this just fantasy? The quick brown fox jumps over the lazy dog! "
        "We stream words as they arrive, one by one, from a language model. Many sessions share one core.")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _pair(tokenizer_path: Path, flow_type: str = "lsd", eos_threshold: float = -4.0):
    tok = Tokenizer(tokenizer_path)
    config = tiny_config(tokenizer_path, tok.vocab_size, flow_type)
    theirs = package_model(config, eos_threshold=eos_threshold)
    ours = PocketTTS(PocketConfig.from_dict(config))
    ours.load_release(release_tensors(theirs), source="test")
    return theirs, ours.eval(), tok


def _clip(seconds: float = 1.5, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(24_000 * seconds)) / 24_000
    return 0.3 * torch.sin(2 * math.pi * 180 * t) * (1 + 0.5 * torch.rand(t.shape, generator=gen))


def _package_run(theirs, voice_audio: torch.Tensor, text: str, seed: int):
    latents = []
    hook = theirs.mimi.quantizer.register_forward_hook(lambda m, args, out: latents.append(args[0].transpose(1, 2)))
    try:
        state = theirs.get_state_for_audio_prompt(voice_audio[None])
        torch.manual_seed(seed)
        audio = theirs.generate_audio(state, text)
    finally:
        hook.remove()
    return torch.cat(latents, dim=1)[0], audio


def _ours_run(gen: PocketGenerator, state, max_steps: int = 2000):
    audio, latents = [], []
    original = gen.decoder.decode

    def record(slots, raw, pad_to=None):
        latents.append(raw[:, 0])
        return original(slots, raw, pad_to)

    gen.decoder.decode = record
    try:
        for _ in range(max_steps):
            (out,) = gen.step([state], [None], 1)
            if out.idle:
                break
            audio.append(out.audio)
    finally:
        gen.decoder.decode = original
    return torch.cat(latents), np.concatenate(audio)


def _close(a, b, tol=1e-4):
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
    assert err <= tol, err


def test_text_chunking_equals_package(tokenizer_path):
    from pocket_tts.models.text_chunking import split_into_best_sentences
    from pocket_tts.modules.text_conditioner import SentencePieceTokenizer

    tok = Tokenizer(tokenizer_path)
    theirs = SentencePieceTokenizer(tok.vocab_size, str(tokenizer_path))
    rules = TextRules(replace_characters={"\u2019": "'"})
    for text, max_tokens in ((LONG, 50), (LONG, 12), ("the pH is 3.5 today. yes", 6), ("it\u2019s fine, isn't it", 50)):
        expected = split_into_best_sentences(theirs, text, max_tokens, False, False,
                                             replace_characters={"\u2019": "'"})
        assert split_chunks(tok, rules, text, max_tokens) == expected
        stream = ChunkStream(tok, rules, max_tokens)
        words, got = text.split(" "), []
        for i, word in enumerate(words):
            got += stream.push(word + (" " if i < len(words) - 1 else ""))
        got += stream.flush()
        assert got == expected, (got, expected)
        assert stream.push(text, final=True) == expected  # text sent whole: the package's grouping
        eager = ChunkStream(tok, rules, max_tokens, eager=True)
        assert eager.push(text, final=True) == expected


def test_eager_chunking_speaks_each_sentence_when_complete(tokenizer_path):
    tok = Tokenizer(tokenizer_path)
    stream = ChunkStream(tok, TextRules(), 50, eager=True)
    got = []
    for word in "Is this the real life? Is this just fantasy? Voices can be cloned".split(" "):
        got.append(stream.push(word + " "))
    assert got[5] == ["Is this the real life?"]  # as soon as the next sentence's first word arrives
    assert got[9] == ["Is this just fantasy?"]
    assert stream.flush() == ["Voices can be cloned."]


def _voice_session(gen: PocketGenerator, voice_audio: torch.Tensor, seed: int, name: str = "clip"):
    gen.voices[name] = gen.model.voice_from_audio(voice_audio)
    return gen.open_session(gen.validate_params({"voice": name, "seed": seed}))


@pytest.mark.parametrize("flow_type", ["lsd", "pointwise"])
def test_whole_text_equals_package(tokenizer_path, flow_type):
    theirs, ours, tok = _pair(tokenizer_path, flow_type)
    voice = _clip()
    their_latents, their_audio = _package_run(theirs, voice, TEXT, seed=11)
    gen = PocketGenerator(ours, tok, {}, max_sessions=2)
    state = _voice_session(gen, voice, seed=11)
    gen.handle_event(state, ControlEvent("text", {"text": TEXT, "final": True}))
    latents, audio = _ours_run(gen, state)
    assert 6 < latents.shape[0] < 60  # ended on EOS, not on the length budget
    _close(latents, their_latents)
    _close(audio, their_audio.numpy())


def test_streamed_word_by_word_equals_package(tokenizer_path):
    """Several chunks, text arriving word by word while speech is already being generated."""
    theirs, ours, tok = _pair(tokenizer_path, eos_threshold=-4.0)
    voice = _clip(seed=5)
    their_latents, their_audio = _package_run(theirs, voice, LONG, seed=7)
    gen = PocketGenerator(ours, tok, {}, max_sessions=3, chunking="exact")
    other = _voice_session(gen, _clip(seed=9), seed=1, name="other")  # shares every batch
    gen.handle_event(other, ControlEvent("text", {"text": "Many sessions share one core.", "final": True}))
    state = _voice_session(gen, voice, seed=7)
    audio, latents, words = [], [], LONG.split(" ")
    original = gen.decoder.decode

    def record(slots, raw, pad_to=None):
        rows = [i for i, slot in enumerate(slots) if slot == state.slot]
        latents.extend(raw[rows, 0])
        return original(slots, raw, pad_to)

    gen.decoder.decode = record
    spoke_before_flush = False
    for step in range(3000):
        if step < len(words):
            gen.handle_event(state, ControlEvent("text", {"text": words[step] + " "}))
        elif step == len(words):
            gen.handle_event(state, ControlEvent("flush"))
        outs = gen.step([other, state], [None, None], 2)
        if not outs[1].idle:
            audio.append(outs[1].audio)
            spoke_before_flush |= step < len(words)
        elif step > len(words):
            break
    assert spoke_before_flush  # the first chunk started before the text was complete
    _close(torch.stack(latents), their_latents)
    _close(np.concatenate(audio), their_audio.numpy())


def test_batch_equals_single_and_interrupt(tokenizer_path):
    _, ours, tok = _pair(tokenizer_path)
    gen = PocketGenerator(ours, tok, {}, max_sessions=4)
    alone = _voice_session(gen, _clip(), seed=4)
    gen.handle_event(alone, ControlEvent("text", {"text": TEXT, "final": True}))
    _, single = _ours_run(gen, alone)
    gen.close_session(alone)
    a, b = _voice_session(gen, _clip(seed=8), seed=2, name="b"), _voice_session(gen, _clip(), seed=4)
    gen.handle_event(a, ControlEvent("text", {"text": LONG, "final": True}))
    gen.handle_event(b, ControlEvent("text", {"text": TEXT, "final": True}))
    got = []
    for _ in range(500):
        out_a, out_b = gen.step([a, b], [None, None], 2)
        if out_b.idle:
            break
        got.append(out_b.audio)
    _close(np.concatenate(got), single)
    assert gen.handle_event(a, ControlEvent("interrupt")) == [{"type": "interrupted"}]
    assert gen.step([a], [None], 1)[0].idle


@pytest.fixture(scope="module")
def release(tokenizer_path, tmp_path_factory) -> Path:
    from tests.pocket_helpers import write_release

    return write_release(tmp_path_factory.mktemp("pocket"), tokenizer_path, Tokenizer(tokenizer_path).vocab_size,
                         _clip(seconds=2.0))


def test_published_check_and_load(release, tmp_path):
    import shutil

    from models import weights
    from models.errors import WeightsError
    from models.registry import load_model

    assert weights.check(release) == []
    gen = load_model("tts", "cpu", {"weights": str(release), "max_sessions": 2})
    assert gen.describe()["voices"] == ["alba"] and gen.describe()["reference_audio"] is True
    assert gen.describe()["weights"]["name"] == "pocket-tts"
    broken = shutil.copytree(release, tmp_path / "broken")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model.safetensors"):
        load_model("tts", "cpu", {"weights": str(broken)})
    (broken / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"model.safetensors: missing"):
        load_model("tts", "cpu", {"weights": str(broken)})


async def test_serves_a_release_over_websocket(release, start_server):
    import aiohttp

    from streaming.client import Client, MediaCollector
    from tests.streaming_helpers import Received, collect_until

    server = await start_server((f"tts:weights={release},max_sessions=4",))
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/healthz") as r:
        health = await r.json()
    assert "pocket-tts" in str(health)
    async with Client(server.ws_url) as client:
        ready = await client.start("tts", params={"seed": 1, "voice": "alba"}, audio="pcm16")
        assert "text" in ready["events"]
        got = Received(MediaCollector(ready))
        for word in "Hello there, this is a sentence spoken word by word.".split():
            await client.send({"type": "text", "text": word + " "})
        await client.send({"type": "flush"})
        await collect_until(client, got, num_samples=24_000 // 4, timeout=30)
        assert len(got.collector.audio_samples()) >= 24_000 // 4
        await client.stop()


def test_padded_bucket_path_equals_eager(tokenizer_path):
    """The graph path (fixed-shape step, batch padded to the bucket) on the CPU, where it runs eagerly."""
    _, ours, tok = _pair(tokenizer_path)
    runs = []
    for graphs, padded in ((False, 2), (True, 4)):
        gen = PocketGenerator(ours, tok, {}, max_sessions=4, graphs=graphs)
        a, b = _voice_session(gen, _clip(seed=8), seed=2, name="b"), _voice_session(gen, _clip(), seed=4)
        gen.handle_event(a, ControlEvent("text", {"text": LONG, "final": True}))
        gen.handle_event(b, ControlEvent("text", {"text": TEXT, "final": True}))
        audio = [np.concatenate([o.audio for o in gen.step([a, b], [None, None], padded) if not o.idle])
                 for _ in range(30)]
        runs.append(np.concatenate(audio))
    _close(runs[1], runs[0])


def _clip_b64(seconds: float, seed: int, rate_hz: int = 16_000) -> str:
    clip = resample(_clip(seconds=seconds, seed=seed).numpy(), 24_000, rate_hz)
    return base64.b64encode(wav_bytes(clip, rate_hz)).decode()


def test_voices_and_bad_input(tokenizer_path):
    from models.errors import ParamError

    _, ours, tok = _pair(tokenizer_path)
    gen = PocketGenerator(ours, tok, {"alba": ours.voice_from_audio(_clip())}, max_sessions=2)
    state = open_direct(gen, {"seed": 0})
    assert state.voice is gen.voices["alba"]
    clip = _clip_b64(2.0, seed=6)
    assert apply_event(gen, state, ControlEvent("set_voice", {"reference_audio": clip})) == [{"type": "voice_set"}]
    assert state.voice is not gen.voices["alba"] and state.voice.num_frames > 1
    # on the loop only the header is read: the validated params still carry the clip, undecoded
    checked = gen.validate_params({"reference_audio": clip, "seed": 1})
    assert checked["reference_audio"].seconds == pytest.approx(2.0, abs=1e-3)
    params = gen.prepare_session(checked)
    other = gen.open_session(params)
    assert gen.describe_session(other, params) == {"voice": "reference", "seed": 1, "text": ""}  # what `ready` echoes
    assert torch.allclose(other.voice.k, state.voice.k)
    gen.close_session(other)
    for bad in ({"voice": "nobody"}, {"seed": "x"}, {"speed": 2}):
        with pytest.raises(ParamError):
            gen.validate_params(bad)
    with pytest.raises(ParamError, match="is 12.0 s; send at most 10 s"):  # from the header, nothing decoded
        gen.validate_params({"reference_audio": _clip_b64(12.0, seed=1)})
    silent = base64.b64encode(wav_bytes(np.zeros(16_000, np.float32), 16_000)).decode()
    with pytest.raises(ParamError, match="silent"):
        open_direct(gen, {"reference_audio": silent})
    with pytest.raises(ParamError, match="not a usable WAV"):
        apply_event(gen, state, ControlEvent("set_voice", {"reference_audio": base64.b64encode(b"junk").decode()}))
    with pytest.raises(ParamError, match="over the limit"):
        gen.handle_event(state, ControlEvent("text", {"text": "x" * 300_000}))
    gen.handle_event(state, ControlEvent("text", {"text": "Still speaking.", "final": True}))
    assert not gen.step([state], [None], 1)[0].idle


def test_shipped_voice_file_equals_cloned_voice(tokenizer_path, tmp_path):
    """A voice state exported by the package (the release's embeddings/NAME.safetensors) reads as the same
    keys/values our encoder computes from the clip it was made from."""
    from pocket_tts.models.model_state import export_model_state

    from models.tts.pocket.checkpoint import voice_from_state_file

    theirs, ours, _ = _pair(tokenizer_path)
    clip = _clip(seed=12)
    export_model_state(theirs.get_state_for_audio_prompt(clip[None]), tmp_path / "v.safetensors")
    shipped = voice_from_state_file(tmp_path / "v.safetensors", ours.cfg.backbone.num_layers)
    cloned = ours.voice_from_audio(clip)
    assert shipped.k.shape == cloned.k.shape
    _close(shipped.k, cloned.k)
    _close(shipped.v, cloned.v)


async def test_reference_upload_does_not_make_another_session_late(release, start_server, one_torch_thread):
    """A Pocket session's reference clip (header checked on the loop; decoded, resampled and encoded by Mimi
    on the engine's preparation thread) leaves the event loop and another live session's chunks on time."""
    from models.diagnostic.pitch import PitchShifter
    from models.registry import load_model
    from tests.streaming_helpers import LoopLag, send_paced, tone

    gen = load_model("tts", "cpu", {"weights": str(release), "max_sessions": 2})
    upload, switch = _clip_b64(10.0, seed=21, rate_hz=48_000), _clip_b64(10.0, seed=22, rate_hz=48_000)
    started = time.perf_counter()
    gen.prepare_session(gen.validate_params({"reference_audio": upload}))
    prepare_ms = 1000 * (time.perf_counter() - started)
    assert prepare_ms > 150, f"the upload is too light to prove anything here ({prepare_ms:.0f} ms)"

    from streaming.client import Client

    pitch = functools.partial(PitchShifter, chunk_ms=40.0)()
    server = await start_server(("pitch", "tts"), generators={"pitch": pitch, "tts": gen})
    audio = tone(220, 4.0)
    async with Client(server.ws_url) as monitor, Client(server.ws_url) as uploader:
        await monitor.start("pitch", {"semitones": 3}, input_sample_rate_hz=16_000, audio="pcm16")
        sender = asyncio.create_task(send_paced(monitor, audio, 320, 16_000))
        await asyncio.sleep(0.5)  # the monitor streams steadily
        with LoopLag() as lag:
            ready = await uploader.start("tts", {"reference_audio": upload, "seed": 4}, audio="pcm16")
            await uploader.send({"type": "set_voice", "reference_audio": switch})
            await uploader.expect("voice_set", timeout=20)
        await sender
        await asyncio.sleep(0.3)  # the last chunks come back
        stopped = await monitor.stop()
        await uploader.stop()
    assert ready["params"] == {"voice": "reference", "seed": 4, "text": ""}  # JSON only: no clip, no tensor
    message = f"event loop lag {lag.max_ms:.0f} ms during a {prepare_ms:.0f} ms preparation"
    assert lag.max_ms < min(200, prepare_ms / 2), message  # the bound of tests/test_engine_prepare.py
    stats = stopped["stats"]
    assert stats["chunks_out"] == len(audio) // 640 and stats["late_chunks"] <= 5, stats
