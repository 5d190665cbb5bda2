"""VC family invariants on a tiny seeded model: streaming == offline, batch == single, bounded memory,
voice switch within one chunk without a click, two-stream mask, bad input."""

import gc

import numpy as np
import pytest
import torch

from models.base import ControlEvent, StepInput, apply_event, open_direct
from models.errors import ParamError
from models.registry import load_model
from models.vc.generator import VCGenerator
from models.vc.model import content_for_latents, two_stream_mask
from tests.vc_helpers import (
    make_tiny_checkpoint,
    offline_reference,
    reference_stream,
    run_session,
    run_together,
    speechlike,
    tiny_config,
    wav_b64,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["istft", "harmonic"])
def ckpt(tmp_path_factory, request):
    """Both vocoder heads: fixed-phase STFT, and harmonic-plus-noise driven by the mic's pitch."""
    path = str(tmp_path_factory.mktemp("vc") / f"tiny_{request.param}.safetensors")
    return make_tiny_checkpoint(path, harmonic=request.param == "harmonic")


@pytest.fixture(scope="module")
def gen(ckpt):
    return VCGenerator(checkpoint=ckpt, max_sessions=6)


@pytest.mark.parametrize("steps", [1, 2])
def test_streaming_equals_offline(gen, steps):
    audio = speechlike(1.6, 5)
    streamed = run_session(gen, audio, {"voice": "low", "seed": 3, "steps": steps})
    offline = offline_reference(gen, audio, "low", 3, steps)
    assert streamed.shape == offline.shape == (len(audio) // 2560 * 2560,)
    np.testing.assert_allclose(streamed, offline, atol=1e-5)


def test_80ms_chunks_equal_offline_too(ckpt):
    gen80 = VCGenerator(checkpoint=ckpt, chunk_ms=80, max_sessions=2)
    assert gen80.spec.input_chunk_samples == 1280 and gen80.chunk_latents == 2
    audio = speechlike(1.2, 6)
    np.testing.assert_allclose(run_session(gen80, audio, {"voice": "high", "seed": 1}),
                               offline_reference(gen80, audio, "high", 1), atol=1e-5)


def test_content_lookahead_delays_the_output_and_its_pitch_and_still_equals_offline(tmp_path):
    """A model trained with its content one latent frame ahead (``content_lookahead=1``): serving runs the DiT a
    frame behind the mic, so the stream's delay grows by 40 ms (and the default chunk shrinks by as much) and
    the harmonic vocoder's pitch track must lag with the latents; the streamed output (one session, a batch,
    voice switches) still equals the offline and reference passes, which delay the pitch the same way."""
    path = make_tiny_checkpoint(str(tmp_path / "ahead.safetensors"), harmonic=True, content_lookahead=1)
    base = make_tiny_checkpoint(str(tmp_path / "base.safetensors"), harmonic=True)
    gen = VCGenerator(checkpoint=path, max_sessions=3)
    assert gen.spec.lookahead_ms == VCGenerator(checkpoint=base, max_sessions=1).spec.lookahead_ms + 40.0
    assert gen.spec.chunk_ms == 120.0  # by default chunk + lookahead wait 160 ms for the mic, as without lookahead
    audio = speechlike(1.6, 5)
    streamed = run_session(gen, audio, {"voice": "low", "seed": 3, "steps": 1})
    np.testing.assert_allclose(streamed, offline_reference(gen, audio, "low", 3), atol=1e-5)
    states = [open_direct(gen, {"voice": v, "seed": 3, "steps": 1}) for v in ("low", "high")]
    together = run_together(gen, states, [audio, speechlike(1.6, 6)], 2)
    np.testing.assert_allclose(together[0], streamed, atol=1e-5)
    params = {"voice": "low", "seed": 7, "steps": 1}
    events = {1: ("set_reference", {"voice": "high"}), 3: ("set_steps", {"steps": 2})}
    audio = speechlike(2.4, 12)
    np.testing.assert_allclose(run_session(gen, audio, params, events), reference_stream(gen, audio, params, events),
                               atol=1e-5)
    # without the pitch delay the output differs: the test above would catch a generator that forgot it
    gen.slots.pitch_delay = None
    assert np.abs(run_session(gen, audio, params, events) - reference_stream(gen, audio, params, events)).max() > 1e-3


def test_content_for_latents_pairs_each_latent_with_the_content_ahead_of_it():
    """Training and offline passes pair latent p with content p + lookahead (two content frames per latent)."""
    content = torch.arange(12.0).reshape(1, 6, 2)  # 3 latents' worth
    assert torch.equal(content_for_latents(content, tiny_config(content_lookahead=0)), content)
    ahead = content_for_latents(content, tiny_config(content_lookahead=1))
    assert torch.equal(ahead[0, :4], content[0, 2:]) and torch.equal(ahead[0, 4:], content[0, 5:].expand(2, 2))


@pytest.mark.parametrize("voice_switch", ["reset", "recache"])
def test_serving_path_equals_the_reference_path_across_voice_and_step_changes(ckpt, voice_switch):
    """models/vc/stream.py (one DiT pass per step, streaming vocoder) == the two-pass step on model.py's
    modules, through voice switches (either mode, early and after the ring has wrapped) and step changes.
    (Which old frames a recache sees matters from the third DiT block on: test_vc_server checks it on the
    shipped model.)"""
    gen = VCGenerator(checkpoint=ckpt, max_sessions=2, voice_switch=voice_switch)
    audio = speechlike(6.4, 12)
    params = {"voice": "low", "seed": 7, "steps": 1}
    events = {1: ("set_reference", {"voice": "high"}), 4: ("set_steps", {"steps": 2}),
              13: ("set_reference", {"voice": "low"}), 17: ("set_steps", {"steps": 1}),
              18: ("set_reference", {"voice": "high"})}
    np.testing.assert_allclose(run_session(gen, audio, params, events), reference_stream(gen, audio, params, events),
                               atol=1e-5)


def test_two_stream_mask_matches_the_cache_rule():
    m = two_stream_mask(8, 4, 3)[0, 0]
    # noisy frame 5 (chunk 1: frames 4..7) sees clean frames 3 only (window 3: > 2, before its chunk) ...
    assert m[8 + 5, :8].nonzero().flatten().tolist() == [3]
    # ... and every noisy frame of its chunk, none of chunk 0
    assert m[8 + 5, 8:].nonzero().flatten().tolist() == [4, 5, 6, 7]
    assert not m[:8, 8:].any()  # clean frames never see noisy ones


def test_batch_equals_single(gen):
    inputs = [speechlike(1.0, i, 100 + 40 * i) for i in range(3)]
    params = [{"voice": "low", "seed": 1}, {"voice": "high", "seed": 2, "steps": 2}, {"voice": "low", "seed": 3}]
    alone = [run_session(gen, a, p) for a, p in zip(inputs, params, strict=True)]
    states = [gen.open_session(gen.validate_params(p)) for p in params]
    together = run_together(gen, states, inputs, 4)
    for s in states:
        gen.close_session(s)
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(t, a, atol=1e-5)


def test_memory_is_bounded_over_a_ten_minute_stream(tmp_path):
    """10 minutes of 960 ms chunks: state tensors never change shape and no Python objects pile up."""
    path = make_tiny_checkpoint(str(tmp_path / "m.safetensors"), window_latents=24)
    gen = VCGenerator(checkpoint=path, chunk_ms=960, max_sessions=1)
    state = gen.open_session(gen.validate_params({"voice": "low", "seed": 0}))
    shapes = {k: tuple(v.shape) for k, v in vars(gen).items() if isinstance(v, torch.Tensor)}
    n = gen.spec.input_chunk_samples
    chunk = speechlike(n / 16_000, 9)
    num_chunks = 10 * 60 * 16_000 // n
    for k in range(num_chunks):
        out = gen.step([state], [StepInput(audio=chunk, num_valid_samples=n)], 1)[0].audio
        if k == num_chunks // 10:
            gc.collect()
            after_one_minute = len(gc.get_objects())
    gc.collect()
    assert np.isfinite(out).all()
    assert len(gc.get_objects()) - after_one_minute < 100
    assert {k: tuple(v.shape) for k, v in vars(gen).items() if isinstance(v, torch.Tensor)} == shapes
    assert gen.cache.num_entries(state.slot) <= gen.cache.capacity
    assert state.num_frames == num_chunks * gen.chunk_latents
    gen.close_session(state)


def test_set_reference_switches_within_one_chunk_without_a_click(gen, monkeypatch):
    latents = []
    decode = gen._decode
    monkeypatch.setattr(gen, "_decode", lambda slots, z, *f0: latents.append(z.clone()) or decode(slots, z, *f0))

    def run(events=None, voice="low"):
        latents.clear()
        audio = run_session(gen, speechlike(2.4, 11), {"voice": voice, "seed": 4}, events)
        return audio, torch.cat(latents, dim=1)[0]  # (frames, D)

    k = 8  # the switch happens before chunk k
    (old, z_old), (new, z_new) = run(), run(voice="high")
    switched, z_sw = run({k: ("set_reference", {"voice": "high"})})
    n, f = gen.spec.input_chunk_samples, gen.chunk_latents
    np.testing.assert_allclose(switched[: k * n], old[: k * n], atol=1e-6)  # nothing before the switch changes
    # the very first chunk after the switch is generated in the new voice: its latents are much closer to
    # those of a session in the new voice all along than to the old voice's
    chunk = slice(k * f, (k + 1) * f)
    assert (z_sw[chunk] - z_new[chunk]).abs().mean() < 0.5 * (z_sw[chunk] - z_old[chunk]).abs().mean()
    # no click: the jump across the boundary is no larger than the largest sample-to-sample step elsewhere
    steps = np.abs(np.diff(np.concatenate([old, new])))
    assert abs(switched[k * n] - switched[k * n - 1]) <= steps.max()


def prepare(gen, params):
    """The engine's two stages of a start: the cheap check on the loop, then the preparation."""
    return gen.prepare_session(gen.validate_params(params))


def test_reference_audio_upload_and_bad_references(gen):
    voice = speechlike(4.0, 21, 180.0)
    params = gen.validate_params({"reference_audio": wav_b64(voice), "seed": 0})
    assert params["voice"] == "reference"
    assert len(gen.prepare_session(params)["reference"]) == 4  # embedded in the preparation stage
    # any sample rate is resampled; clipped audio is usable
    prepare(gen, {"reference_audio": wav_b64(speechlike(4.0, 22)[::2], rate=8000)})
    prepare(gen, {"reference_audio": wav_b64(np.clip(4 * voice, -1, 1))})
    prepare(gen, {"reference_audio": wav_b64(speechlike(20.0, 23))})  # long: the first 10 s are used
    checked_on_the_loop = {  # from the header alone: nothing is decoded
        "at most": wav_b64(speechlike(31.0, 25)),
        "WAV": "bm90IGEgd2F2",
        "base64": 12,
        "8-48 kHz": wav_b64(speechlike(4.0, 26), rate=96_000),
    }
    for match, data in checked_on_the_loop.items():
        with pytest.raises(ParamError, match=match):
            gen.validate_params({"reference_audio": data})
    checked_when_decoded = {"too short": wav_b64(speechlike(1.0, 24)), "silent": wav_b64(np.zeros(64_000, np.float32))}
    for match, data in checked_when_decoded.items():
        with pytest.raises(ParamError, match=match):
            prepare(gen, {"reference_audio": data})
    for params, match in [({"voice": "nobody"}, "unknown voice"), ({"steps": 3}, "steps"), ({"pitch": 1}, "pitch"),
                          ({"seed": "x"}, "seed")]:
        with pytest.raises(ParamError, match=match):
            gen.validate_params(params)


def test_reference_fit_moves_the_embedding_not_the_weights(ckpt):
    """An upload's embedding fitted to its own speech: lower error, same weights, deterministic, off with 0."""
    from models.vc.reference_fit import fit_reference

    gen = VCGenerator(checkpoint=ckpt, max_sessions=2, reference_fit_steps=0)
    weights = {k: v.clone() for k, v in gen.model.state_dict().items()}
    audio = torch.from_numpy(speechlike(4.0, 41, 170.0))[None]
    mel = gen.model.mel.reference(audio)[0]
    with torch.no_grad():
        speaker, tokens, tmask = gen.model.speaker(mel[None], torch.ones(1, len(mel), dtype=torch.bool))
    fit = [fit_reference(gen.model, audio, speaker, tokens, tmask, steps=30, temperature=0.3, chunk=4, lr=0.05)
           for _ in range(2)]
    losses = fit[0][2]
    assert len(losses) == 31 and losses[-1] < 0.9 * losses[0]  # the DiT rebuilds the reference better
    torch.testing.assert_close(fit[0][0], fit[1][0], rtol=0, atol=0)  # the same upload, the same embedding
    assert not torch.equal(fit[0][0], speaker) and not torch.equal(fit[0][1], tokens)
    assert all(torch.equal(weights[k], v) for k, v in gen.model.state_dict().items())
    assert all(p.grad is None for p in gen.model.parameters())
    # a fit that makes things worse (here a step far too long) keeps the encoder's embedding as it came
    wild, wild_tokens, wild_losses = fit_reference(gen.model, audio, speaker, tokens, tmask, steps=3,
                                                   temperature=0.3, chunk=4, lr=1e3)
    assert wild_losses[-1] > wild_losses[0]
    assert torch.equal(wild, speaker) and torch.equal(wild_tokens, tokens)

    data = wav_b64(speechlike(4.0, 41, 170.0))
    plain = gen.reference_from_wav(data)  # reference_fit_steps=0: the speaker encoder's embedding as it is
    fitter = VCGenerator(checkpoint=ckpt, max_sessions=2, reference_fit_steps=10)
    fitted = fitter.reference_from_wav(data)
    assert (gen.describe()["reference_fit_steps"], fitter.describe()["reference_fit_steps"]) == (0, 10)  # the page's
    assert not torch.allclose(plain[0], fitted[0]) and not torch.allclose(plain[1], fitted[1])
    torch.testing.assert_close(plain[2], fitted[2])  # the token mask and the pitch are the upload's either way
    torch.testing.assert_close(plain[3], fitted[3])
    assert gen.reference_from_wav(data)[0] is plain[0]  # the same upload again: kept, not embedded again
    gen.reference_fit_steps = 10  # ... unless the fit it would get differs
    torch.testing.assert_close(gen.reference_from_wav(data)[0], fitted[0])
    with pytest.raises(ValueError, match="reference_fit_steps"):
        VCGenerator(checkpoint=ckpt, max_sessions=1, reference_fit_steps=-1)


def test_bad_events_keep_the_session(gen):
    state = gen.open_session(gen.validate_params({"voice": "low", "seed": 0}))
    for event, match in [(ControlEvent("set_reference", {"voice": "nobody"}), "unknown voice"),
                         (ControlEvent("set_steps", {"steps": 0}), "steps"), (ControlEvent("prompt", {}), "prompt")]:
        with pytest.raises(ParamError, match=match):
            gen.handle_event(state, event)
    assert gen.handle_event(state, ControlEvent("set_steps", {"steps": 2})) == [{"type": "steps_set", "steps": 2}]
    gen.close_session(state)


def test_reference_sent_live_in_pieces(gen):
    """A live upload in pieces (as the page sends it over a data channel): the final piece applies it."""
    state = open_direct(gen, {"voice": "low", "seed": 0})
    scratch: dict = {}  # the engine keeps one per session for the preparation stage

    def send(payload):
        return apply_event(gen, state, ControlEvent("set_reference", payload), scratch)

    data = wav_b64(speechlike(4.0, 31, 200.0))
    pieces = [data[i : i + 10_000] for i in range(0, len(data), 10_000)]
    for piece in pieces[:-1]:
        assert send({"reference_audio_part": piece}) == []
    applied = [{"type": "reference_set", "voice": "reference"}]
    assert send({"reference_audio_part": pieces[-1], "final": True}) == applied
    expected = gen.reference_from_wav(data)
    torch.testing.assert_close(gen.slots.speaker[state.slot], expected[0])
    # a bad piece, an over-long upload and a bad WAV are refused; the session keeps its voice
    with pytest.raises(ParamError, match="piece"):
        send({"reference_audio_part": 5})
    with pytest.raises(ParamError, match="over"):
        for _ in range(100):
            send({"reference_audio_part": "A" * 50_000})
    with pytest.raises(ParamError, match="WAV"):
        send({"reference_audio_part": "bm90", "final": True})
    assert state.voice == "reference"
    # nothing of the refused uploads is left over: a whole upload in one final piece applies as it is
    assert send({"reference_audio_part": data, "final": True}) == applied
    with pytest.raises(ValueError, match="prepare_event"):  # the step thread never embeds an upload itself
        gen.handle_event(state, ControlEvent("set_reference", {"reference_audio": data}))
    gen.close_session(state)


def test_nan_clipped_and_silent_mic_input_stays_finite(gen):
    n = gen.spec.input_chunk_samples
    state = gen.open_session(gen.validate_params({"voice": "low", "seed": 0}))
    bad = [np.full(n, np.nan, np.float32), np.full(n, np.inf, np.float32), 5 * speechlike(n / 16_000, 1),
           np.zeros(n, np.float32)]
    for chunk in bad:
        out = gen.step([state], [StepInput(audio=chunk, num_valid_samples=n)], 1)[0].audio
        assert out.shape == (n,) and np.isfinite(out).all() and np.abs(out).max() <= 1.0
    gen.close_session(state)


def test_registry_builds_vc_with_options(ckpt):
    gen = load_model("vc", "cpu", {"checkpoint": ckpt, "chunk_ms": 80})
    # the look-ahead is the vocoder's delay: 30 ms for the fixed-phase head's 40 ms window, 10 ms for the 20 ms one
    assert gen.spec.chunk_ms == 80 and gen.spec.lookahead_ms == (10.0 if gen.model.vae.cfg.harmonics else 30.0)
    assert [v["id"] for v in gen.describe()["voices"]] == ["high", "low"]
    with pytest.raises(ValueError, match="chunk_ms"):
        load_model("vc", "cpu", {"checkpoint": ckpt, "chunk_ms": 100})


def test_phoneme_error_rate_of_the_shared_recognizer(ckpt):
    from evaluation.phonemes import PhonemeRecognizer, phoneme_error_rate

    recognizer = PhonemeRecognizer(ckpt)
    assert set(recognizer.recognize(speechlike(1.0, 1))) <= set(recognizer.symbols[1:])
    try:
        reference = recognizer.reference("Hello there.", "en-us")
    except RuntimeError:
        pytest.skip("espeak-ng is not installed")
    assert reference and all(p in recognizer.symbols for p in reference)
    per = phoneme_error_rate([("Hello there.", "en-us", speechlike(1.0, 2))], ckpt)
    assert 0.0 <= per <= 10.0


def test_paper_config_builds_and_steps_on_cpu():
    """The MeanVC-sized config (random weights; bench/vc.py --device cuda --config paper) runs with plain torch."""
    gen = VCGenerator(config="paper", max_sessions=2, max_batch_size=2)
    dit_params = sum(p.numel() for p in gen.model.dit.parameters())
    assert gen.cfg.dim == 512 and gen.cfg.depth == 4 and gen.cfg.num_heads == 2 and 10e6 < dit_params < 25e6
    n = gen.spec.input_chunk_samples
    states = [gen.open_session(gen.validate_params({"seed": i, "steps": 1 + i})) for i in range(2)]
    outs = gen.step(states, [StepInput(audio=speechlike(n / 16_000, i), num_valid_samples=n) for i in range(2)], 2)
    assert all(o.audio.shape == (n,) and np.isfinite(o.audio).all() for o in outs)


def test_training_loss_with_the_split_target_for_long_intervals():
    """scripts/train_vc.py's DiT loss: finite with long intervals learning the split-in-two target; for a
    velocity field that is the same everywhere, that target is the velocity itself (the identity holds)."""
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_vc import dit_loss, split_target

    from models.vc.model import VCModel
    from tests.vc_helpers import tiny_config

    v = torch.randn(2, 8, 4)
    r, t = torch.zeros(2, 8), torch.ones(2, 8)
    torch.testing.assert_close(split_target(lambda z, r_, t_: v, torch.randn(2, 8, 4), r, t), v)
    torch.manual_seed(0)
    cfg = tiny_config()
    model = VCModel(cfg)
    rng = random.Random(0)
    b, n, per = 4, 8, cfg.content_per_latent
    ref_len = 4 * cfg.ref_stride
    batch = (torch.randn(b, n, cfg.vae.latent_dim), torch.randn(b, n * per, cfg.content_dim),
             torch.randn(b, ref_len, cfg.num_mels), torch.ones(b, ref_len, dtype=torch.bool))
    # the last two: context = own samples (from noise at temperature 1, then at serving's 0.3)
    for split_above, self_context, temperature in ((2.0, 0.0, 1.0), (0.3, 0.0, 1.0), (2.0, 1.0, 1.0), (2.0, 1.0, 0.3)):
        losses = dit_loss(model, batch, 4, torch.Generator().manual_seed(rng.randrange(100)), cfg, split_above,
                          self_context, self_context_temperature=temperature)
        assert all(torch.isfinite(x) for x in losses.values())
        losses["loss"].backward()


def test_harmonic_vocoder_moves_the_speakers_pitch_to_the_target(tmp_path):
    """A harmonic vocoder's pitch is the mic's, moved to the target's register: a 110 Hz speaker converted to
    the 220 Hz voice comes out at ~220 Hz once their own register is learnt (about a second), keeps their
    intonation (the source's 5 % vibrato survives as the same relative contour), and a switch to the 100 Hz
    voice moves it there from the next chunk."""
    from models.audio.pitch_track import track_signal

    path = make_tiny_checkpoint(str(tmp_path / "h.safetensors"), harmonic=True)
    gen = VCGenerator(checkpoint=path, max_sessions=1)
    f0s = []
    decode = gen._decode
    gen._decode = lambda rows, z, f0: f0s.append(f0.clone()) or decode(rows, z, f0)
    audio = speechlike(4.8, 3, 110.0)
    run_session(gen, audio, {"voice": "high", "seed": 0}, {20: ("set_reference", {"voice": "low"})})
    out = torch.cat(f0s, dim=1)[0]  # (frames,) at 10 ms
    source, _ = track_signal(torch.from_numpy(audio)[None])
    high, low = (float(gen.voice_embedding(v)[3].exp()) for v in ("high", "low"))
    assert 200 < high < 240 and 90 < low < 110  # the voices' median pitch, measured on their references
    settled = slice(96, 320)  # chunks 6-19: after a second, before the switch at chunk 20 (frame 320)
    assert abs(float(out[settled].median()) / high - 1) < 0.06
    ratio = (out / source[0, : len(out)])[settled]
    assert float(ratio.std() / ratio.mean()) < 0.01  # the same contour, scaled (by a factor that has settled)
    after = slice(336, 480)  # from the chunk after the switch
    assert abs(float(out[after].median()) / low - 1) < 0.06
