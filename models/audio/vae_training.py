"""Training-side pieces of the waveform VAE (models/audio/vae.py): losses, and the VAE of a checkpoint.

Reconstruction, magnitude and KL losses, and loading the VAE inside a speech family's checkpoint (fine-tuning
starts from it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.audio.vae import PITCH_RANGE_HZ, VAEConfig, WaveformVAE
from models.checkpoint_io import load_tensors, strip_prefix


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Multi-resolution STFT (log-magnitude L1 + spectral convergence) and log-mel L1 between (B, T) signals."""
    from models.audio.dsp import log_mel

    out = {"stft": pred.new_zeros(()), "mel": pred.new_zeros(())}
    for n_fft in (256, 512, 1024):
        window = torch.hann_window(n_fft, device=pred.device)
        p = torch.stft(pred, n_fft, n_fft // 4, window=window, return_complex=True).abs().clamp_min(1e-5)
        t = torch.stft(target, n_fft, n_fft // 4, window=window, return_complex=True).abs().clamp_min(1e-5)
        convergence = (t - p).norm() / t.norm().clamp_min(1e-3)  # over the batch: silent crops stay finite
        out["stft"] = out["stft"] + (p.log() - t.log()).abs().mean() + convergence
    out["mel"] = (log_mel(pred) - log_mel(target)).abs().mean()
    return out


def load_checkpoint_vae(path: str, **overrides) -> WaveformVAE:
    """The VAE inside a speech family's safetensors checkpoint (``vae.*`` tensors, ``config["vae"]``).

    ``overrides`` replace config fields that change no weight's shape (e.g. ``synth_window``); ``harmonics``
    on a checkpoint without a harmonic head starts one as a copy of the magnitude head (to fine-tune), and
    ``pitch_head`` on one without a pitch head starts a fresh one.
    """
    tensors, meta = load_tensors(path)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"]["vae"].items()}
    vae = WaveformVAE(VAEConfig(**{**fields, **overrides}))
    state = strip_prefix(tensors, "vae.")
    state.pop("silence", None)  # the TTS checkpoint's silence latent is the generator's, not a VAE weight
    if vae.harm_head is not None and "harm_head.weight" not in state:
        state["harm_head.weight"], state["harm_head.bias"] = state["head.weight"], state["head.bias"]
    if vae.pitch_head is not None and "pitch_head.0.weight" not in state:  # a new pitch head: its initial weights
        state |= {f"pitch_head.{k}": v for k, v in vae.pitch_head.state_dict().items()}
    vae.load_state_dict(state)
    return vae.eval()


def magnitude_loss(vae: WaveformVAE, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the decoder's log-magnitudes and the STFT of the (delayed) target, frame for frame.

    ``target`` (B, T * hop + delay_samples): the output's time axis. Each frame's target spectrum is taken
    under the full n_fft window centred on the samples the frame synthesises, also when the synthesis
    window is shorter: a 20 ms window cannot resolve the harmonics of a low voice (100 Hz apart), and a
    decoder fitted to such smeared spectra made deep voices come out unvoiced (found by a pitch test).
    """
    cfg = vae.cfg
    pad = (cfg.n_fft - cfg.synth_len) // 2
    frames = F.pad(target, (pad, pad)).unfold(-1, cfg.n_fft, cfg.frame_hop) * vae.window  # (B, T * up, n_fft)
    spec = torch.fft.rfft(frames).transpose(1, 2)  # (B, F, T * up)
    floor = math.log(1e-4)  # below ~-80 dB nothing is audible: do not spend capacity there
    pred = vae.log_magnitudes(z).clamp_min(floor)
    return (pred - spec.abs().clamp_min(1e-4).log()).abs().mean()


def pitch_loss(pitch: torch.Tensor, f0: torch.Tensor, voicing: torch.Tensor) -> dict[str, torch.Tensor]:
    """A pitch head's output (B, N, 2) against a tracker's f0 and voicing (B, N): the teacher's losses.

    ``f0``: L1 in log f0 over the teacher's voiced frames (in octaves); ``voicing``: binary cross-entropy.
    """
    voiced = (voicing > 0.5).float()
    err = (pitch[..., 0] - f0.clamp(*PITCH_RANGE_HZ).log()).abs() / math.log(2)
    return {"f0": (err * voiced).sum() / voiced.sum().clamp_min(1.0),
            "voicing": F.binary_cross_entropy_with_logits(pitch[..., 1], voiced)}


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence to a standard normal, averaged over elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
