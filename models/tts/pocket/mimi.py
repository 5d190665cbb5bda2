"""Mimi as Pocket TTS uses it: an offline encoder for voice prompts and a streaming decoder per session.

Decoder path of one latent frame (12.5 Hz, 32 channels)::

    latent * emb_std + emb_mean -> quantizer.output_proj (1x1) -> upsample (depthwise transposed conv, x16
    to 200 Hz) -> decoder_transformer (causal, window ``context``) -> SEANet decoder (x120 to 24 kHz)

Every convolution is causal (left context carried between calls) and a transposed convolution carries its
overlapping tail, so decoding frame by frame equals decoding the whole sequence. :class:`SlotDecoder` keeps
those carries and the transformer's keys/values for ``num_slots`` sessions in preallocated tensors (rows =
slots) and decodes a batch of sessions per call; the encoder runs once per reference clip, offline.

Module names follow the release's ``mimi.*`` state dict (``encoder.model.N.conv.weight`` ...), so loading is
a key mapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.cache import RingKVCache
from models.graphs import BucketGraphs
from models.tts.pocket.config import PocketConfig, SEANetShape, TransformerShape
from models.tts.pocket.model import Transformer, advance_written, attention_layers, claim


class CausalConv1d(nn.Module):
    """Conv1d with ``(kernel - 1) * dilation + 1 - stride`` frames of left context (zeros or the first frame)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, bias: bool = True,
                 replicate: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride, dilation=dilation, bias=bias)
        self.context = (kernel - 1) * dilation + 1 - stride
        self.replicate = replicate

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, new left context); ``previous`` None starts a stream (zeros, or the first frame repeated)."""
        if previous is None:
            previous = (x[..., :1] if self.replicate else x.new_zeros(1, 1, 1)).expand(
                x.shape[0], x.shape[1], self.context)
        if self.context:
            x = torch.cat([previous, x], dim=-1)
        return self.conv(x), x[..., x.shape[-1] - self.context:]


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d whose overlapping tail (kernel - stride frames, bias removed) is added to the next call."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.convtr = nn.ConvTranspose1d(cin, cout, kernel, stride, groups=groups, bias=bias)
        self.tail = kernel - stride

    def forward(self, x: torch.Tensor, partial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, new tail) given the previous tail (B, C_out, kernel - stride)."""
        y = self.convtr(x)
        head = y[..., : self.tail] + partial
        tail = y[..., y.shape[-1] - self.tail:]
        if self.convtr.bias is not None:
            tail = tail - self.convtr.bias[:, None]
        return torch.cat([head, y[..., self.tail: y.shape[-1] - self.tail]], dim=-1), tail


class ResBlock(nn.Module):
    """SEANet residual block: ELU, dilated conv, ELU, 1x1 conv (``block.1`` / ``block.3``)."""

    def __init__(self, dim: int, kernel: int, dilation: int, compress: int) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList([nn.ELU(), CausalConv1d(dim, hidden, kernel, dilation=dilation), nn.ELU(),
                                    CausalConv1d(hidden, dim, 1)])


def _seanet_layers(s: SEANetShape, decoder: bool) -> nn.ModuleList:
    """The release's layer list (ELU entries included, so parameter indices match its names)."""
    layers: list[nn.Module] = []

    def residuals(dim: int) -> list[nn.Module]:
        return [ResBlock(dim, s.residual_kernel_size, s.dilation_base ** j, s.compress)
                for j in range(s.n_residual_layers)]

    if decoder:
        mult = 2 ** len(s.ratios)
        layers.append(CausalConv1d(s.dimension, mult * s.n_filters, s.kernel_size))
        for ratio in s.ratios:
            layers += [nn.ELU(), CausalConvTranspose1d(mult * s.n_filters, mult * s.n_filters // 2, 2 * ratio, ratio)]
            layers += residuals(mult * s.n_filters // 2)
            mult //= 2
        layers += [nn.ELU(), CausalConv1d(s.n_filters, s.channels, s.last_kernel_size)]
    else:
        mult = 1
        layers.append(CausalConv1d(s.channels, s.n_filters, s.kernel_size))
        for ratio in reversed(s.ratios):
            layers += residuals(mult * s.n_filters)
            layers += [nn.ELU(), CausalConv1d(mult * s.n_filters, mult * s.n_filters * 2, 2 * ratio, ratio)]
            mult *= 2
        layers += [nn.ELU(), CausalConv1d(mult * s.n_filters, s.dimension, s.last_kernel_size)]
    return nn.ModuleList(layers)


class SEANet(nn.Module):
    """SEANet encoder or decoder (``model.N``)."""

    def __init__(self, shape: SEANetShape, decoder: bool) -> None:
        super().__init__()
        self.model = _seanet_layers(shape, decoder)


class ProjectedTransformer(nn.Module):
    """Mimi's transformer over (B, C, T) frames (its widths match here, so no projections)."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        self.transformer = Transformer(shape)


class Quantizer(nn.Module):
    """Only the output projection remains of Mimi's quantizer (latent -> decoder width, 1x1)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.output_proj = nn.Conv1d(dim, out_dim, 1, bias=False)


class Downsample(nn.Module):
    """Encoder frames (200 Hz) -> latent frames (12.5 Hz): strided conv, left context = first frame."""

    def __init__(self, stride: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = CausalConv1d(dim, out_dim, 2 * stride, stride, bias=False, replicate=True)


class Upsample(nn.Module):
    """Latent frames -> decoder frames: depthwise transposed conv."""

    def __init__(self, stride: int, dim: int, in_dim: int) -> None:
        super().__init__()
        self.convtr = CausalConvTranspose1d(in_dim, dim, 2 * stride, stride, groups=dim, bias=False)


class Mimi(nn.Module):
    """The release's ``mimi`` (encoder, decoder, their transformers, resampling, quantizer projection)."""

    def __init__(self, cfg: PocketConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SEANet(cfg.encoder, decoder=False)
        self.decoder = SEANet(cfg.decoder, decoder=True)
        self.encoder_transformer = ProjectedTransformer(cfg.encoder_transformer)
        self.decoder_transformer = ProjectedTransformer(cfg.decoder_transformer)
        self.quantizer = Quantizer(cfg.latent_dim, cfg.quantizer_output_dim)
        encoder_rate = cfg.sample_rate_hz / cfg.encoder.hop
        self.stride = round(encoder_rate / cfg.frame_rate_hz)
        if self.stride != 1:
            self.downsample = Downsample(self.stride, cfg.encoder.dimension, cfg.inner_dim or cfg.encoder.dimension)
            self.upsample = Upsample(self.stride, cfg.decoder.dimension, cfg.outer_dim or cfg.decoder.dimension)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Latents (B, N, D) of audio (B, 1, T) at 24 kHz, padded to whole latent frames (offline)."""
        frame = self.cfg.samples_per_latent
        x = F.pad(audio, (0, -audio.shape[-1] % frame))
        for layer in self.encoder.model:
            if isinstance(layer, ResBlock):
                x = x + _res_block(layer, x, None)[0]
            elif isinstance(layer, CausalConv1d):
                x = layer(x)[0]
            else:
                x = layer(x)
        x = x.transpose(1, 2)  # (B, T, C)
        positions = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        x = attention_layers(self.encoder_transformer.transformer, x, positions).transpose(1, 2)
        if self.stride != 1:
            x = self.downsample.conv(x)[0]
        return x.transpose(1, 2)


def _res_block(block: ResBlock, x: torch.Tensor, carries: list[torch.Tensor] | None):
    """Residual branch of a block and its convolutions' new carries."""
    out, news = x, []
    convs = [m for m in block.block if isinstance(m, CausalConv1d)]
    for i, conv in enumerate(convs):
        out, new = conv(F.elu(out), None if carries is None else carries[i])
        news.append(new)
    return out, news


class SlotDecoder:
    """Streaming Mimi decoding for ``num_slots`` sessions: carries and transformer KV per slot (rows = slots).

    Per-call indices (rows, positions, ring entries) are tensors, so with ``graphs`` the whole decode is one
    captured CUDA graph per batch bucket (:class:`~models.graphs.BucketGraphs`); on the CPU it runs eagerly.
    """

    def __init__(self, mimi: Mimi, num_slots: int, device: torch.device, max_latents_per_call: int = 1,
                 graphs: bool = False) -> None:
        self.mimi, self.device = mimi, device
        self.num_slots = num_slots
        self.pad_slot = num_slots  # one more row: padding rows of a bucket decode there
        num_slots += 1
        shape = mimi.cfg.decoder_transformer
        # The ring holds the attention window plus the frames of one call (written before they attend), so
        # the first new frame still sees ``context`` frames back; visibility is by label (position).
        self.frames_per_call = mimi.stride * max_latents_per_call
        self.cache = RingKVCache(num_layers=shape.num_layers, num_slots=num_slots, num_heads=shape.kv_heads,
                                 head_dim=shape.head_dim, window=shape.context + self.frames_per_call,
                                 device=device)
        self.positions = torch.zeros(num_slots, dtype=torch.long)  # decoder frames decoded per slot
        # One carry tensor per streaming convolution, in decoding order.
        self.carries: list[torch.Tensor] = []
        for conv in self._convs():
            if isinstance(conv, CausalConvTranspose1d):
                channels, length = conv.convtr.out_channels, conv.tail
            else:
                channels, length = conv.conv.in_channels, conv.context
            self.carries.append(torch.zeros(num_slots, channels, length, device=device))
        self.core = BucketGraphs(self._core, enabled=graphs)

    def _convs(self) -> list[nn.Module]:
        out: list[nn.Module] = [self.mimi.upsample.convtr] if self.mimi.stride != 1 else []
        for layer in self.mimi.decoder.model:
            if isinstance(layer, ResBlock):
                out += [m for m in layer.block if isinstance(m, CausalConv1d)]
            elif isinstance(layer, (CausalConv1d, CausalConvTranspose1d)):
                out.append(layer)
        return out

    def reset(self, slots: list[int]) -> None:
        """Start fresh streams in these slots."""
        rows = torch.as_tensor(slots, dtype=torch.long)
        for carry in self.carries:
            carry[rows.to(self.device)] = 0
        self.positions[rows] = 0
        self.cache.clear(slots, keep_sink=False)

    @torch.no_grad()
    def decode(self, slots: list[int], latents: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
        """Audio (B, N * samples_per_latent) of un-normalised latents (B, N, D), continuing each slot's stream.

        ``pad_to``: run a batch of that size (rows past B decode into ``pad_slot``), so a captured graph per
        batch bucket can be replayed.
        """
        if latents.shape[1] * self.mimi.stride > self.frames_per_call:
            raise ValueError(f"decode at most {self.frames_per_call // self.mimi.stride} latents per call")
        num_frames = latents.shape[1] * self.mimi.stride
        start = self.positions[torch.as_tensor(slots, dtype=torch.long)]
        positions = start[:, None] + torch.arange(num_frames)[None]  # (B, F) decoder frames
        rows, batch = list(slots), len(slots)
        if pad_to is not None and pad_to > batch:
            rows += [self.pad_slot] * (pad_to - batch)
            positions = torch.cat([positions, torch.arange(num_frames).expand(pad_to - batch, -1)])
            latents = torch.cat([latents, latents.new_zeros(pad_to - batch, *latents.shape[1:])])
        positions = positions.to(self.device)
        index = positions.remainder(self.cache.capacity)  # the ring: entry n of a stream sits at n mod capacity
        audio = self.core(torch.as_tensor(rows, dtype=torch.long, device=self.device), positions, index, latents)
        self.positions[torch.as_tensor(slots, dtype=torch.long)] = start + num_frames
        advance_written(self.cache, slots, num_frames)
        return audio[:batch]

    def _core(self, rows: torch.Tensor, positions: torch.Tensor, index: torch.Tensor, latents: torch.Tensor
              ) -> torch.Tensor:
        """The decode proper, tensors only (capturable): carries gathered by row, stepped, scattered back."""
        mimi = self.mimi
        carries = [c.index_select(0, rows) for c in self.carries]
        new: list[torch.Tensor] = []
        x = F.conv1d(latents.transpose(1, 2), mimi.quantizer.output_proj.weight)  # (B, C, N)
        k = 0
        if mimi.stride != 1:
            x, tail = mimi.upsample.convtr(x, carries[k])
            new.append(tail)
            k += 1
        claim(self.cache, rows, index, positions)
        x = attention_layers(mimi.decoder_transformer.transformer, x.transpose(1, 2), positions, self.cache, rows,
                             index)
        x = x.transpose(1, 2)
        for layer in mimi.decoder.model:
            if isinstance(layer, ResBlock):
                branch, news = _res_block(layer, x, carries[k: k + 2])
                x = x + branch
                new += news
                k += 2
            elif isinstance(layer, (CausalConv1d, CausalConvTranspose1d)):
                x, carry = layer(x, carries[k])
                new.append(carry)
                k += 1
            else:
                x = layer(x)
        for carry, value in zip(self.carries, new, strict=True):
            carry.index_copy_(0, rows, value)
        return x[:, 0]
