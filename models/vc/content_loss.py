"""A frozen phoneme recognizer as a training loss: a decoder's output must be heard as saying what its input said.

The VC family's content recognizer (its causal log-mel front end and CTC content encoder, trained on espeak-ng
audio) is run on a decoded crop and on the real crop it reconstructs; the loss is the KL divergence from the
real crop's phoneme posteriors to the decoded one's. The recognizer's weights are frozen (they get no gradient
and no optimizer sees them); gradients flow through it into whatever made the decoded audio. Used by
``scripts/train_tts.py vae --content-loss`` (issue 15: the harmonic TTS decoder raised the phoneme error rate
~5 % while fixing voicing; its spectral losses alone do not say which details carry the phonemes).

Why KL of the posteriors rather than L2 of the bottleneck features: the posteriors are what phoneme error is
read from, so the loss weighs exactly the differences that change a recognized phoneme (a bottleneck L2 also
pulls on directions the classifier ignores, e.g. level and timbre, which the spectral losses already cover);
its gradient in the logits is bounded (``softmax(decoded) - softmax(real)``), so it cannot blow up on a crop
whose decoded spectrum is far off, and it is zero where the two are heard alike whatever the features do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.vc.model import CausalMel, ContentEncoder, offline_content
from models.vc.phonemes import posterior_kl


class ContentLoss(nn.Module):
    """KL(real || decoded) of a frozen CTC recognizer's phoneme posteriors, mean over frames and batch."""

    def __init__(self, mel: CausalMel, content: ContentEncoder) -> None:
        super().__init__()
        self.mel, self.content = mel, content
        self.requires_grad_(False)
        # Left in training mode on purpose: neither part has dropout or batch statistics, so the mode changes
        # nothing here, and cuDNN's GRU refuses a backward pass in eval mode (--device cuda).

    @classmethod
    def from_checkpoint(cls, path: str) -> ContentLoss:
        """The recognizer inside a VC checkpoint (.safetensors, models/vc/checkpoint.py)."""
        from models.vc.checkpoint import load_checkpoint

        model = load_checkpoint(path).model
        return cls(model.mel, model.content)

    def log_posteriors(self, audio: torch.Tensor) -> torch.Tensor:
        """16 kHz audio (B, T) -> log phoneme posteriors (B, T // 320, classes), read from the crop's start."""
        return F.log_softmax(self.content.logits(offline_content(self.mel, self.content, audio)), dim=-1)

    def forward(self, decoded: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The loss between time-aligned (B, T) signals; the real one is only a target (no gradient)."""
        with torch.no_grad():
            target = self.log_posteriors(real)
        pred = self.log_posteriors(decoded)
        return posterior_kl(pred, target)
