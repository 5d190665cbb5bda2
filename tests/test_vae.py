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
