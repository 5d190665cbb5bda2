"""The waveform VAE's decoders: chunked and streaming decode equal the offline decode, for both synthesis windows."""

import pytest
import torch

from models.audio.vae import VAEConfig, WaveformVAE
from models.audio.vae_stream import StreamingDecoder


def tiny_vae(synth_window: int) -> WaveformVAE:
    torch.manual_seed(0)
    cfg = VAEConfig(latent_dim=8, enc_channels=32, dec_channels=32, dec_up_channels=(32, 32), dec_blocks=2,
                    synth_window=synth_window)
    return WaveformVAE(cfg).eval()


@pytest.mark.parametrize("synth_window", [0, 320], ids=["n_fft", "short"])
def test_streaming_decoder_equals_offline(synth_window: int) -> None:
    vae = tiny_vae(synth_window)
    z = torch.randn(2, 8, 24)
    decoder = StreamingDecoder(vae)
    with torch.no_grad():
        full = vae.decode(z)
        state, parts = decoder.initial_state(2), []
        for k0 in range(0, 24, 4):
            audio, state = decoder(z[:, :, k0 : k0 + 4].transpose(1, 2), state)
            parts.append(audio)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_short_synthesis_window_cuts_the_delay_and_keeps_the_loudness() -> None:
    long, short = tiny_vae(0), tiny_vae(320)
    assert (long.delay_samples, short.delay_samples) == (480, 160)
    short.load_state_dict(long.state_dict())  # the same weights: only the synthesis differs
    z = torch.randn(1, 8, 50)
    with torch.no_grad():
        a, b = long.decode(z)[0, 2000:], short.decode(z)[0, 2000:]
    ratio = float(b.pow(2).mean().sqrt() / a.pow(2).mean().sqrt())
    assert 0.7 < ratio < 1.4, ratio  # random phases: same spectra, comparable level (4/3 gain for both)


def test_bad_synthesis_window_is_refused() -> None:
    with pytest.raises(ValueError, match="synth_window"):
        tiny_vae(250)


# -- the harmonic-plus-noise head -----------------------------------------------------------------------------
def harmonic_vae() -> WaveformVAE:
    torch.manual_seed(0)
    cfg = VAEConfig(latent_dim=8, enc_channels=32, dec_channels=32, dec_up_channels=(32, 32), dec_blocks=2,
                    synth_window=320, harmonics=40)
    return WaveformVAE(cfg).eval()


def gliding_pitch(frames: int) -> torch.Tensor:
    """f0 gliding 90 -> 220 Hz with a held stretch, for two streams (the second a fifth higher)."""
    f0 = torch.linspace(90.0, 220.0, frames)
    f0[frames // 3 : frames // 3 + 10] = f0[frames // 3 - 1]
    return torch.stack([f0, f0 * 1.5])


def test_harmonic_streaming_decoder_equals_offline() -> None:
    vae = harmonic_vae()
    z = torch.randn(2, 8, 24)
    f0 = gliding_pitch(24 * 4)
    decoder = StreamingDecoder(vae)
    with torch.no_grad():
        full = vae.decode(z, f0)
        state, parts = decoder.initial_state(2), []
        for k0 in range(0, 24, 4):
            frames = slice(4 * k0, 4 * (k0 + 4))
            audio, state = decoder(z[:, :, k0 : k0 + 4].transpose(1, 2), state, f0[:, frames])
            parts.append(audio)
    assert full.abs().max() > 1e-3  # not vacuous: there is sound
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="f0"):
        vae.decode(z)  # a harmonic decoder cannot run without a pitch
    with pytest.raises(ValueError, match="StreamingDecoder"):
        vae.decode_chunk(z, 4)


def test_harmonics_are_periodic_at_the_given_pitch() -> None:
    """Harmonics sit at exact multiples of f0 (not on the STFT's 25 Hz bins): a 73 Hz voice has its partials at
    73, 146, 219 Hz, and the tracker reads 73 Hz back from the decoder's periodic part."""
    from models.audio.harmonic import synthesize
    from models.audio.pitch_track import track_signal

    frames, num = 100, 30
    f0 = torch.full((1, frames), 73.0)
    amps = torch.full((1, frames, num), 0.02)
    audio, phase = synthesize(amps, f0, amps[:, 0], f0[:, 0], torch.zeros(1), 160, 16_000)
    power = torch.fft.rfft(audio[0, 1600:] * torch.hann_window(audio.shape[1] - 1600)).abs() ** 2
    hz = torch.fft.rfftfreq(audio.shape[1] - 1600, 1 / 16_000)
    off_harmonic = (hz / 73.0 - (hz / 73.0).round()).abs() * 73.0  # Hz to the nearest multiple of 73
    assert power[off_harmonic < 3.0].sum() / power.sum() > 0.99
    tracked, voicing = track_signal(audio)
    assert voicing[0, 10:].min() > 0.9
    torch.testing.assert_close(tracked[0, 10:], torch.full((frames - 10,), 73.0), atol=0.5, rtol=0)
    assert 0 <= float(phase) < 2 * 3.1416


def test_pitch_tracker() -> None:
    """Tones at 65-400 Hz are read within 1 %, silence and noise are unvoiced, streaming equals one pass."""
    from models.audio.pitch_track import StreamingPitch, hold_unvoiced, track_signal

    t = torch.arange(16_000) / 16_000
    for hz in (65.0, 110.0, 233.0, 400.0):
        tone = sum(0.3 / k * torch.sin(2 * torch.pi * k * hz * t) for k in range(1, 6))
        f0, voicing = track_signal(tone[None])
        assert voicing[0, 5:].min() > 0.9, hz
        assert (f0[0, 5:] / hz - 1).abs().max() < 0.01, (hz, f0[0, 5:])
    torch.manual_seed(0)
    silence_and_noise = torch.cat([torch.zeros(8000), 0.3 * torch.randn(8000)])[None]
    f0, voicing = track_signal(silence_and_noise)
    assert voicing.max() < 0.2
    stream = StreamingPitch()
    tone = (0.5 * torch.sin(2 * torch.pi * 150 * t))[None].repeat(2, 1)
    state, parts = stream.initial_state(2), []
    for k in range(0, 16_000, 2560):
        f0, voicing, state = stream(tone[:, k : k + 2560], state)
        parts.append(f0)
    torch.testing.assert_close(torch.cat(parts, dim=1), track_signal(tone)[0])
    held = hold_unvoiced(torch.tensor([[100.0, 300.0, 120.0, 500.0]]), torch.tensor([[0.0, 1.0, 0.2, 0.9]]),
                         torch.tensor([90.0]))
    assert held.tolist() == [[90.0, 300.0, 300.0, 500.0]]


# -- the pitch head (a harmonic decoder that predicts its own pitch: the TTS vocoder) ---------------------------
def pitch_head_vae() -> WaveformVAE:
    torch.manual_seed(0)
    cfg = VAEConfig(latent_dim=8, enc_channels=32, dec_channels=32, dec_up_channels=(32, 32), dec_blocks=2,
                    synth_window=320, harmonics=40, pitch_head=16)
    vae = WaveformVAE(cfg).eval()
    with torch.no_grad():  # voiced now and then, at pitches that move: the held and the followed path both run
        vae.pitch_head[-1].weight.mul_(torch.tensor([3.0, 30.0])[:, None, None])  # voicing: decided (few near 0.5)
        vae.pitch_head[-1].bias.copy_(torch.tensor([5.0, 0.0]))
    return vae


def test_pitch_head_streaming_decoder_equals_offline() -> None:
    from models.audio.vae import predicted_f0

    vae = pitch_head_vae()
    z = torch.randn(2, 8, 24)
    decoder = StreamingDecoder(vae)
    with torch.no_grad():
        full = vae.decode(z)  # no f0: the pitch head's
        pitch = vae.predict_pitch(vae.features(z))
        state, parts = decoder.initial_state(2), []
        for k0 in range(0, 24, 4):
            audio, state = decoder(z[:, :, k0 : k0 + 4].transpose(1, 2), state)
            parts.append(audio)
    voiced = torch.sigmoid(pitch[..., 1]) > 0.5
    assert 0.1 < voiced.float().mean() < 0.9  # not vacuous: both voiced and held frames
    assert full.abs().max() > 1e-3
    # predicted f0 differs in its last bits between the two paths (matrix products vs convolutions), and the
    # oscillators' phase integrates it: the samples agree within a slow phase drift
    # (~1e-4 after 1 s of this tiny model's pitch, which jumps 50-600 Hz from frame to frame; thread-dependent)
    streamed = torch.cat(parts, dim=1)
    torch.testing.assert_close(streamed, full, atol=1e-3, rtol=1e-4)
    # the predicted track drives it: the same as handing decode that track
    torch.testing.assert_close(vae.decode(z, predicted_f0(pitch)).detach(), full, atol=1e-6, rtol=0)


def test_predicted_pitch_holds_through_unvoiced_frames() -> None:
    from models.audio.vae import PITCH_START_HZ, predicted_f0

    hz = torch.tensor([[100.0, 200.0, 300.0, 400.0, 500.0]])
    voicing_logit = torch.tensor([[-5.0, 5.0, -5.0, -5.0, 5.0]])
    pitch = torch.stack([hz.log(), voicing_logit], dim=-1)
    torch.testing.assert_close(predicted_f0(pitch), torch.tensor([[PITCH_START_HZ, 200.0, 200.0, 200.0, 500.0]]))
    # a stream's previous f0 is held into the next chunk's unvoiced start; a zero state means the stream's start
    torch.testing.assert_close(predicted_f0(pitch, torch.tensor([150.0]))[0, 0], torch.tensor(150.0))
    torch.testing.assert_close(predicted_f0(pitch, torch.tensor([0.0]))[0, 0], torch.tensor(PITCH_START_HZ))


def test_pitch_head_learns_a_tracked_pitch() -> None:
    """A few steps of the teacher's losses on a tone's tracked pitch lower both (the training stage's mechanism)."""
    from models.audio.pitch_track import track_signal
    from models.audio.vae_training import pitch_loss

    vae = pitch_head_vae().train()
    t = torch.arange(16 * 640) / 16_000
    audio = torch.stack([0.5 * torch.sin(2 * torch.pi * 140 * t), 0.5 * torch.sin(2 * torch.pi * 210 * t)])
    f0, voicing = track_signal(audio)
    assert (voicing[:, 4:] > 0.5).all()
    with torch.no_grad():
        feats = vae.features(vae.encode(audio)[0])
    opt = torch.optim.Adam(vae.pitch_head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        losses = pitch_loss(vae.predict_pitch(feats), f0, voicing)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        (losses["f0"] + losses["voicing"]).backward()
        opt.step()
    assert losses["f0"].item() < 0.3 * first["f0"] and losses["voicing"].item() < 0.5 * first["voicing"]


# -- the content-preservation loss (a frozen phoneme recognizer hears decoded vs real audio) --------------------
def test_content_loss_trains_the_decoder_not_the_recognizer(tmp_path) -> None:
    """A few decoder steps on the recognizer's loss alone lower it; the recognizer stays as loaded, gradient-free."""
    import numpy as np

    from models.vc.content_loss import ContentLoss
    from tests.vc_helpers import make_tiny_checkpoint, speechlike

    judge = ContentLoss.from_checkpoint(make_tiny_checkpoint(str(tmp_path / "vc.safetensors")))
    with torch.no_grad():  # a random recognizer is nearly uniform: make it decide, as a trained one does
        judge.content.head.weight.mul_(30.0)
    loaded = {k: v.clone() for k, v in judge.state_dict().items()}
    vae = tiny_vae(320).train()
    audio = torch.from_numpy(np.stack([speechlike(0.96, 0, 120.0), speechlike(0.96, 1, 220.0)]))
    with torch.no_grad():
        z = vae.encode(audio)[0]
    real = torch.nn.functional.pad(audio, (vae.delay_samples, 0))  # the decoder's output lags by its delay
    decoder = [p for name, p in vae.named_parameters() if not name.startswith("enc")]
    opt = torch.optim.Adam(decoder, lr=3e-3)
    losses = []
    for _ in range(25):
        pred = vae.decode(z)
        loss = judge(pred, real[:, : pred.shape[1]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.01  # not vacuous: the random decoder is heard differently
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in judge.parameters())
    for k, v in judge.state_dict().items():
        torch.testing.assert_close(v, loaded[k])
    assert judge(real, real).item() < 1e-6  # the same audio: nothing to correct
