"""A phoneme recognizer that reads VAE latents, and the training loss built on it for the VC DiT.

Why (issue 15): the VC DiT loses the words even with the true past and eight flow steps (held-out phoneme
error 0.62-0.66 where the vocoder round trip of the same latents reads 0.24; ``bench/vc_dit_diagnostics.py``):
its flow-matching loss weighs every latent channel alike and says nothing about which errors change what
is heard. This recognizer, trained with CTC on the latents of the training corpora (never on the DiT's
output), hears the phonemes in a latent sequence; :class:`LatentContentLoss` asks that the DiT's one-step
sample be heard as saying what the true latents of the crop say (KL of the two posteriors, as
:mod:`models.vc.content_loss` does for decoded audio). It reads latents, not audio, so the loss costs a
small network per training step instead of the vocoder plus a mel front end, and it is a different
recognizer from the phoneme judge of ``bench/human_speech.py`` (the VC model's own audio recognizer), so
the judge is not what is optimised.

Measured (issue 15, session 9; docs/models/vc.md): at weight 0.5 the loss was met on the training voices and
every held-out number got worse (phoneme error 0.69-0.80 -> 0.82-0.87, speaker margins and zero-shot down):
the DiT found latents this small recognizer hears and the vocoder and the judge do not. Kept as a tool (the
DiT option is off by default), not as part of the shipped recipe.

Offline only (a training loss): it sees the whole crop both ways.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.vc.phonemes import posterior_kl


@dataclass(frozen=True)
class LatentRecognizerConfig:
    """Sizes of the latent phoneme recognizer."""

    latent_dim: int = 32  # VAE latent channels
    num_phonemes: int = 64  # CTC classes incl. blank (id 0)
    channels: int = 256
    conv_layers: int = 4  # dilations 1, 2, 4, 8
    per_latent: int = 2  # output frames per latent frame (50 Hz out of 25 Hz: room for CTC on fast speech)


class LatentRecognizer(nn.Module):
    """Normalised latents (B, T, D) -> phoneme logits (B, T * per_latent, V): residual dilated convolutions.

    Convolutions only (receptive field ~1 s at the default sizes): a bidirectional GRU in their place stayed
    on CTC's all-blank plateau for 1,600 steps on these latents, where the convolutions leave it within 50.
    """

    def __init__(self, cfg: LatentRecognizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.inp = nn.Conv1d(cfg.latent_dim, c, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv1d(c, c, 5, padding=2 * 2**i, dilation=2**i) for i in range(cfg.conv_layers))
        self.up = nn.ConvTranspose1d(c, c, cfg.per_latent, stride=cfg.per_latent)
        self.post = nn.Conv1d(c, c, 5, padding=2)
        self.head = nn.Conv1d(c, cfg.num_phonemes, 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> logits (B, T * per_latent, V)."""
        h = F.gelu(self.inp(latents.transpose(1, 2)))
        for conv in self.convs:
            h = h + F.gelu(conv(h))
        h = F.gelu(self.up(h))
        h = h + F.gelu(self.post(h))
        return self.head(h).transpose(1, 2)

    def state(self, symbols: list[str]) -> dict:
        """What :meth:`load` reads back: sizes, classes, weights."""
        return {"cfg": asdict(self.cfg), "symbols": symbols, "state": self.state_dict()}

    @classmethod
    def load(cls, path: str) -> tuple[LatentRecognizer, list[str]]:
        """A recognizer saved by ``scripts/train_latent_recognizer.py`` (its .pt file) and its classes."""
        saved = torch.load(path, map_location="cpu")
        model = cls(LatentRecognizerConfig(**saved["cfg"]))
        model.load_state_dict(saved["state"])
        return model, saved["symbols"]


class LatentContentLoss(nn.Module):
    """KL(true || generated) of a frozen latent recognizer's phoneme posteriors on time-aligned latents."""

    def __init__(self, recognizer: LatentRecognizer) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.requires_grad_(False)
        # No dropout or batch statistics: training and eval mode compute the same.

    @classmethod
    def from_file(cls, path: str) -> LatentContentLoss:
        """The loss around a saved recognizer."""
        return cls(LatentRecognizer.load(path)[0])

    def forward(self, generated: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """(B, T, D) each; gradients flow into ``generated`` only."""
        with torch.no_grad():
            target = self.recognizer(true).log_softmax(-1)
        return posterior_kl(self.recognizer(generated).log_softmax(-1), target)
