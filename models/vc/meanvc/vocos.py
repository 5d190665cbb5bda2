"""MeanVC's vocoder: a Vocos (ConvNeXt backbone + ISTFT head) in our code, and its streaming use per session.

The module tree mirrors the published one (``backbone.embed``, ``backbone.norm``, ``backbone.convnext.{i}.
{dwconv,norm,pwconv1,pwconv2,gamma}``, ``backbone.final_layer_norm``, ``head.out``, ``head.istft.window``),
so the published state dict loads through :func:`models.weights.load_mapped` with names unchanged; the
sizes are read off the tensors (:meth:`VocosConfig.from_shapes`). MeanVC ships it as TorchScript
(``vocos.pt``): its tensors are read, its code is not run. Proven equal to the ``vocos`` package on tiny
random configs (``tests/test_meanvc.py``).

Streaming (:class:`StreamingVocoder`) follows MeanVC's runtime: each chunk of mel frames is decoded with
the 3 frames before it as left context, and the 2 frames at each seam are cross-faded linearly between the
previous window's decode and this one's. Unlike the runtime (which cross-fades its previous window's last
2 frames with this window's first 2, one frame apart, and so emits a frame more per chunk than it is
given), the seam is aligned here: each chunk gives exactly a chunk of audio, 2 frames (20 ms) late.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CONTEXT_FRAMES = 3  # left context decoded with each chunk (MeanVC's vocoder_overlap)
FADE_FRAMES = 2  # cross-faded at each seam (MeanVC's (overlap - 1)): the vocoder's delay


@dataclass(frozen=True)
class VocosConfig:
    """Sizes of a Vocos with a mel input and an ISTFT head (MeanVC's: 80 mels, 10 ms hop)."""

    num_mels: int = 80
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    n_fft: int = 640
    hop: int = 160

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]], hop: int = 160) -> VocosConfig:
        """The config a published state dict's shapes imply (the hop is not in the tensors: MeanVC's is 10 ms)."""
        dim, num_mels, _ = shapes["backbone.embed.weight"]
        layers = {k.split(".")[2] for k in shapes if k.startswith("backbone.convnext.")}
        return cls(num_mels=num_mels, dim=dim, intermediate_dim=shapes["backbone.convnext.0.pwconv1.weight"][0],
                   num_layers=len(layers), n_fft=shapes["head.out.weight"][0] - 2, hop=hop)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k=7), LayerNorm, pointwise MLP with GELU, layer scale, residual. (B, C, T) -> (B, C, T)."""

    def __init__(self, dim: int, intermediate_dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block."""
        h = self.norm(self.dwconv(x).transpose(1, 2))
        h = self.gamma * self.pwconv2(F.gelu(self.pwconv1(h)))
        return x + h.transpose(1, 2)


class Backbone(nn.Module):
    """Mel (B, M, T) -> features (B, T, dim)."""

    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.embed = nn.Conv1d(cfg.num_mels, cfg.dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.convnext = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate_dim) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Features of a mel sequence."""
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: T frames -> T * hop samples, sample j at frame j // hop."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex spectrum (B, n_fft // 2 + 1, T) -> audio (B, T * hop)."""
        num_frames = spec.shape[-1]
        frames = torch.fft.irfft(spec, self.n_fft, dim=1) * self.window[None, :, None]  # (B, n_fft, T)
        length = (num_frames - 1) * self.hop + self.n_fft
        pad = (self.n_fft - self.hop) // 2
        size, kernel, stride = (1, length), (1, self.n_fft), (1, self.hop)
        audio = F.fold(frames, size, kernel, stride=stride)[:, 0, 0, pad:-pad]
        squares = self.window.square()[None, :, None].expand(1, -1, num_frames)
        envelope = F.fold(squares, size, kernel, stride=stride)[0, 0, 0, pad:-pad]
        return audio / envelope


class Head(nn.Module):
    """Features (B, T, dim) -> log magnitude and phase per bin -> audio through the ISTFT."""

    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.out = nn.Linear(cfg.dim, cfg.n_fft + 2)
        self.istft = ISTFT(cfg.n_fft, cfg.hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Audio (B, T * hop)."""
        log_magnitude, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)
        magnitude = log_magnitude.exp().clamp(max=100.0)
        return self.istft(torch.polar(magnitude, phase))


class Vocos(nn.Module):
    """The vocoder: mel in [0, 1] (B, M, T) -> audio (B, T * hop)."""

    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.head = Head(cfg)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Audio of a mel sequence (the published model's ``decode``)."""
        return self.head(self.backbone(mel))

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """Audio of a mel sequence."""
        return self.forward(mel)


class StreamingVocoder:
    """MeanVC's chunked vocoding with per-session state in preallocated rows (one row per session slot).

    Per row: the last :data:`CONTEXT_FRAMES` mel frames (the DiT's scale, [-1, 1]) and the last
    :data:`FADE_FRAMES` frames of audio of the previous window, to cross-fade with.
    """

    def __init__(self, vocos: Vocos, num_rows: int, device: torch.device | str) -> None:
        self.vocos = vocos
        cfg = vocos.cfg
        self.hop = cfg.hop
        self.context = torch.full((num_rows, cfg.num_mels, CONTEXT_FRAMES), -1.0, device=device)  # silence
        fade = FADE_FRAMES * cfg.hop
        self.tail = torch.zeros(num_rows, fade, device=device)
        self.fade_in = torch.linspace(0, 1, fade, device=device)

    def reset(self, rows: list[int]) -> None:
        """A new session in these rows: silence before it."""
        self.context[rows] = -1.0
        self.tail[rows] = 0.0

    def __call__(self, rows: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Mel chunk (B, C, M) in [-1, 1] -> audio (B, C * hop), 2 frames late; advances the rows' state."""
        window = torch.cat([self.context[rows], mel.transpose(1, 2)], dim=2)  # (B, M, 3 + C)
        audio = self.vocos.decode((window + 1) / 2)  # sample j at frame (chunk start - 3) + j / hop
        hop, num = self.hop, mel.shape[1]
        seam = audio[:, hop : (1 + FADE_FRAMES) * hop]  # the 2 frames before the chunk, decoded again
        faded = self.tail[rows] * (1 - self.fade_in) + seam * self.fade_in
        out = torch.cat([faded, audio[:, (1 + FADE_FRAMES) * hop : (num + 1) * hop]], dim=1)
        self.context[rows] = window[:, :, -CONTEXT_FRAMES:]
        self.tail[rows] = audio[:, (num + 1) * hop :]
        return out


def vocode_chunked(vocos: Vocos, mel: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """The streaming vocoder over a whole mel sequence (B, T, M), one chunk at a time (tests, benches)."""
    stream = StreamingVocoder(vocos, mel.shape[0], mel.device)
    rows = torch.arange(mel.shape[0], device=mel.device)
    return torch.cat([stream(rows, mel[:, i : i + chunk_frames]) for i in range(0, mel.shape[1], chunk_frames)], 1)
