"""The waveform VAE's decoders: chunked and streaming decode equal the offline decode, for both synthesis windows."""

import pytest
import torch

from models.audio.vae import StreamingDecoder, VAEConfig, WaveformVAE


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
