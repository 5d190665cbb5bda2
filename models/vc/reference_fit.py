"""Fitting an uploaded reference's voice embedding to the reference's own speech (test-time adaptation).

The speaker encoder embeds a voice it never heard near the training voices it resembles; for a human voice
unlike the few human-derived ones it was trained on, the converted speech stays nearer the source than the
reference (issue 15: the held-out awb speaker converted toward an uploaded rms reference, margin -0.03). The
reference itself says how its voice should come out: given the reference's own content features and the
embedding, the DiT should rebuild the reference's latents. So a few gradient steps move the embedding (the
speaker vector and the timbre tokens; the model's weights stay as they are) to lower the error of the
DiT's one-step sample, made as serving makes it (noise at the serving temperature, r = 0, t = 1, the
serving chunk), against the reference's latents. Only the embedding moves, a few hundred numbers per
token, so it learns the voice, not the sentence: every later chunk still takes its words from the mic.

Chosen on held-out espeak-ng voices of ``data/speech_vc`` (bench/vc.py quality), confirmed on the held-out
human-derived voices (docs/models/vc.md, session 10). The cost is the fit: 30 steps take ~3 s for a 3 s
reference and ~6 s for 10 s on one CPU thread, once per upload, in the preparation stage (off the event loop
and the steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.vc.model import VCModel, content_for_latents

FIT_LR = 0.04  # Adam's step on the embedding (chosen with the step count on the development voices)


def reference_latents(model: VCModel, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference clip (1, L) at 16 kHz -> its normalised VAE latents (1, N, D) and content (1, N * per, C)."""
    hop = model.vae.cfg.hop
    x = F.pad(audio, (0, -audio.shape[1] % hop))
    latents = model.vae.normalize(model.vae.encode(x)[0]).transpose(1, 2)
    content = content_for_latents(model.content_offline(x), model.cfg)
    per = model.cfg.content_per_latent
    num = min(latents.shape[1], content.shape[1] // per)
    return latents[:, :num], content[:, : num * per]


def fit_reference(
    model: VCModel,
    audio: torch.Tensor,
    speaker: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    steps: int,
    temperature: float,
    chunk: int,
    lr: float = FIT_LR,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit the speaker vector (1, dim) and timbre tokens (1, S, dim) of ``audio`` (1, L) to its own latents.

    Returns the fitted speaker and tokens (detached) and the loss before each step and after the last (that
    one on the first step's noise, so the two compare); when the fit did not lower it, the encoder's speaker
    and tokens as they came. The model's parameters get no gradient and no change (``torch.autograd.grad`` on
    the embedding alone), so a fit can run beside sessions stepping the same model. Deterministic: the noise
    comes from ``seed``.
    """
    encoded = speaker, tokens  # what is returned if the fit does not help
    with torch.inference_mode(False), torch.no_grad():
        latents, content = reference_latents(model, audio)
        speaker = speaker.clone()  # normal tensors, not inference ones: autograd needs them
        tokens = tokens.clone()
        token_mask = token_mask.clone()
    speaker.requires_grad_(True)
    tokens.requires_grad_(True)
    opt = torch.optim.Adam([speaker, tokens], lr=lr)
    rng = torch.Generator(device=latents.device).manual_seed(seed)
    num = latents.shape[1]
    zeros = torch.zeros(1, num, device=latents.device)
    ones = torch.ones(1, num, device=latents.device)
    losses = []
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(steps + 1):
            noise = temperature * torch.randn(latents.shape, generator=rng, device=latents.device)
            if step == 0:
                first_noise = noise
            elif step == steps:  # the last pass only measures, on the first pass's noise: the two compare
                noise = first_noise
            timbre = model.dit.timbre_kv(tokens)
            sample = noise - model.dit.forward_offline(latents, noise, content, zeros, ones, speaker, timbre,
                                                       token_mask, chunk)
            loss = (sample - latents).pow(2).mean()
            losses.append(float(loss.detach()))
            if step == steps:
                break
            speaker.grad, tokens.grad = torch.autograd.grad(loss, [speaker, tokens])
            opt.step()
    if not losses[-1] < losses[0]:  # an upload the fit cannot rebuild (music, noise): never worse than encoded
        return encoded[0], encoded[1], losses
    return speaker.detach(), tokens.detach(), losses
