"""MeanVC's speaker model in our code: WavLM (the front end) and the ECAPA-TDNN over its layers.

MeanVC embeds a reference with UniSpeech's speaker-verification model ``wavlm_large_finetune.pth``
(``ECAPA_TDNN_SMALL(feat_dim=1024, feat_type='wavlm_large')``): WavLM's hidden states (the input to the
first transformer layer and every layer's output, 25 for WavLM-Large) are mixed with softmax weights
(``feature_weight``), instance-normalised, and an ECAPA-TDNN (512 channels, 3 SE-Res2 blocks, attentive
statistics pooling) maps them to a 256-d vector, the DiT's ``spks``. It runs once per reference, never
per chunk.

Module names mirror the published state dict: the ECAPA part as is, WavLM as UniSpeech/fairseq names it
(``feature_extractor.conv_layers.{i}.0``, ``.2.1`` for the layer norm, ``encoder.pos_conv.0.weight_g/_v``,
``encoder.layers.{i}.self_attn.{q,k,v,out}_proj``, ``.grep_linear``, ``.grep_a``,
``encoder.layers.0.self_attn.relative_attention_bias``, ``self_attn_layer_norm``, ``fc1``, ``fc2``,
``final_layer_norm``, ``encoder.layer_norm``) under ``feature_extract.model.``. Proven equal to
transformers' ``WavLMModel`` on tiny random configs (``tests/test_meanvc.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class WavLMConfig:
    """WavLM sizes; defaults are WavLM-Large's."""

    dim: int = 1024
    layers: int = 24
    heads: int = 16
    ffn_dim: int = 4096
    conv_dim: int = 512
    conv_kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    layer_norm_convs: bool = True  # "layer" feature extractor (Large); False: group norm on the first (Base)
    pos_kernel: int = 128
    pos_groups: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    normalize_audio: bool = True  # Large normalises each waveform to zero mean, unit variance


class ConvLayer(nn.Module):
    """Conv (``0``), then a layer norm over channels (``2.1``) or group norm (``2``), then GELU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bias: bool, norm: str | None) -> None:
        super().__init__()
        self.norm_kind = norm
        self.layers = nn.ModuleDict({"0": nn.Conv1d(cin, cout, kernel, stride=stride, bias=bias)})
        if norm == "layer":
            self.layers["2"] = nn.ModuleDict({"1": nn.LayerNorm(cout)})
        elif norm == "group":
            self.layers["2"] = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C', T')."""
        x = self.layers["0"](x)
        if self.norm_kind == "layer":
            x = self.layers["2"]["1"](x.transpose(1, 2)).transpose(1, 2)
        elif self.norm_kind == "group":
            x = self.layers["2"](x)
        return F.gelu(x)


class WavLMAttention(nn.Module):
    """Self-attention with WavLM's gated relative position bias."""

    def __init__(self, cfg: WavLMConfig, has_bias: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.grep_linear = nn.Linear(self.head_dim, 8)
        self.grep_a = nn.Parameter(torch.ones(1, cfg.heads, 1, 1))
        self.cfg = cfg
        if has_bias:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, cfg.heads)

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """(H, T, T) bias from bucketed relative positions (memory - context), bidirectional."""
        rel = torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
        half = self.cfg.num_buckets // 2
        buckets = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(self.cfg.max_distance / exact)
                         * (half - exact)).long()
        buckets = buckets + torch.where(rel < exact, rel, large.clamp_max(half - 1))
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """X (B, T, C), bias (H, T, T) -> (B, T, C)."""
        b, t, c = x.shape
        heads = x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        gate_a, gate_b = torch.sigmoid(self.grep_linear(heads).view(b, self.heads, t, 2, 4).sum(-1)).chunk(2, -1)
        gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0  # (B, H, T, 1)
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=gate * bias[None])
        return self.out_proj(y.transpose(1, 2).reshape(b, t, c))


class WavLMLayer(nn.Module):
    """Pre-norm transformer layer (WavLM-Large's layer_norm_first)."""

    def __init__(self, cfg: WavLMConfig, has_bias: bool) -> None:
        super().__init__()
        self.self_attn = WavLMAttention(cfg, has_bias)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.fc1, self.fc2 = nn.Linear(cfg.dim, cfg.ffn_dim), nn.Linear(cfg.ffn_dim, cfg.dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One layer."""
        x = x + self.self_attn(self.self_attn_layer_norm(x), bias)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class PosConv(nn.Module):
    """Convolutional position embedding with weight norm over dim 2 (``pos_conv.0.weight_g/_v``)."""

    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        self.groups, self.kernel = cfg.pos_groups, cfg.pos_kernel
        self.weight_g = nn.Parameter(torch.ones(1, 1, cfg.pos_kernel))
        self.weight_v = nn.Parameter(torch.randn(cfg.dim, cfg.dim // cfg.pos_groups, cfg.pos_kernel) * 0.02)
        self.bias = nn.Parameter(torch.zeros(cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


class WavLM(nn.Module):
    """Waveform (B, T) at 16 kHz -> hidden states (input of layer 1 and each layer's output) and the final."""

    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        norms = ["layer"] * len(cfg.conv_kernels) if cfg.layer_norm_convs else ["group"] + [None] * 6
        self.feature_extractor = nn.Module()
        self.feature_extractor.conv_layers = nn.ModuleList(
            ConvLayer(1 if i == 0 else cfg.conv_dim, cfg.conv_dim, k, s, cfg.conv_bias, norms[i])
            for i, (k, s) in enumerate(zip(cfg.conv_kernels, cfg.conv_strides, strict=True)))
        self.layer_norm = nn.LayerNorm(cfg.conv_dim)
        self.post_extract_proj = nn.Linear(cfg.conv_dim, cfg.dim)
        self.encoder = nn.Module()
        self.encoder.pos_conv = nn.ModuleList([PosConv(cfg)])
        self.encoder.layers = nn.ModuleList(WavLMLayer(cfg, i == 0) for i in range(cfg.layers))
        self.encoder.layer_norm = nn.LayerNorm(cfg.dim)

    def forward(self, audio: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states (``layers + 1`` of (B, T', dim), not final-normed) and the final-normed output."""
        if self.cfg.normalize_audio:
            audio = F.layer_norm(audio, audio.shape[-1:])
        x = audio[:, None]
        for conv in self.feature_extractor.conv_layers:
            x = conv(x)
        x = self.post_extract_proj(self.layer_norm(x.transpose(1, 2)))
        x = x + self.encoder.pos_conv[0](x)
        bias = self.encoder.layers[0].self_attn.position_bias(x.shape[1], x.device)
        hidden = [x]
        for layer in self.encoder.layers:
            x = layer(x, bias)
            hidden.append(x)
        return hidden, self.encoder.layer_norm(x)


# -- ECAPA-TDNN ------------------------------------------------------------------------------------------
class Conv1dReluBn(nn.Module):
    """Conv, ReLU, BatchNorm."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C', T)."""
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Res2Net convolution: channel groups, each conv'd after adding the previous group's output."""

    def __init__(self, channels: int, kernel: int, padding: int, dilation: int, scale: int) -> None:
        super().__init__()
        self.width, self.nums = channels // scale, scale - 1
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel, padding=padding, dilation=dilation)
                                   for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(self.nums))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        parts, out = torch.split(x, self.width, 1), []
        sp = torch.zeros_like(parts[0])
        for i in range(self.nums):
            sp = self.bns[i](F.relu(self.convs[i](parts[i] if i == 0 else sp + parts[i])))
            out.append(sp)
        return torch.cat(out + [parts[self.nums]], dim=1)


class SEConnect(nn.Module):
    """Squeeze-and-excitation over time."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(channels, bottleneck), nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        return x * torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))[:, :, None]


class SERes2Block(nn.Module):
    """1x1 conv, Res2 conv, 1x1 conv, SE, residual."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.Conv1dReluBn1 = Conv1dReluBn(channels, channels)
        self.Res2Conv1dReluBn = Res2Conv1dReluBn(channels, 3, dilation, dilation, scale=8)
        self.Conv1dReluBn2 = Conv1dReluBn(channels, channels)
        self.SE_Connect = SEConnect(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        return x + self.SE_Connect(self.Conv1dReluBn2(self.Res2Conv1dReluBn(self.Conv1dReluBn1(x))))


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over time."""

    def __init__(self, channels: int, attention: int = 128) -> None:
        super().__init__()
        self.linear1, self.linear2 = nn.Conv1d(channels, attention, 1), nn.Conv1d(attention, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, 2C)."""
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(x))), dim=2)
        mean = (alpha * x).sum(dim=2)
        std = ((alpha * x.pow(2)).sum(dim=2) - mean.pow(2)).clamp(min=1e-9).sqrt()
        return torch.cat([mean, std], dim=1)


class SpeakerModel(nn.Module):
    """Reference audio (B, T) at 16 kHz -> the DiT's speaker vector (B, emb_dim)."""

    def __init__(self, wavlm: WavLMConfig, channels: int = 512, emb_dim: int = 256) -> None:
        super().__init__()
        self.feature_extract = nn.Module()
        self.feature_extract.model = WavLM(wavlm)
        self.feature_weight = nn.Parameter(torch.zeros(wavlm.layers + 1))
        self.instance_norm = nn.InstanceNorm1d(wavlm.dim)
        self.layer1 = Conv1dReluBn(wavlm.dim, channels, kernel=5, padding=2)
        self.layer2, self.layer3, self.layer4 = (SERes2Block(channels, d) for d in (2, 3, 4))
        self.conv = nn.Conv1d(3 * channels, 1536, 1)
        self.pooling = AttentiveStatsPool(1536)
        self.bn = nn.BatchNorm1d(2 * 1536)
        self.linear = nn.Linear(2 * 1536, emb_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """The speaker vector of each clip."""
        hidden, _ = self.feature_extract.model(audio)
        weights = torch.softmax(self.feature_weight, dim=-1)[:, None, None, None]
        x = (weights * torch.stack(hidden)).sum(dim=0).transpose(1, 2) + 1e-6  # (B, dim, T')
        x = self.instance_norm(x)
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        out = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        return self.linear(self.bn(self.pooling(out)))


def published_name(ours: str) -> str:
    """Our parameter name -> the published one (inverse of :func:`our_name`)."""
    head, sep, tail = ours.partition(".conv_layers.")
    if not sep:
        return ours
    index, _, rest = tail.partition(".layers.")
    return f"{head}.conv_layers.{index}.{rest}"


def our_name(published: str) -> str | None:
    """A published key -> ours, None for training-only tensors (mask embedding, quantiser, projections)."""
    if any(part in published for part in ("mask_emb", "label_embs_concat", "final_proj", "project_q", "quantizer")):
        return None
    if ".conv_layers." in published:  # feature_extractor.conv_layers.{i}.{0|2|2.1}.* -> .{i}.layers.{...}.*
        head, tail = published.split(".conv_layers.", 1)
        index, rest = tail.split(".", 1)
        return f"{head}.conv_layers.{index}.layers.{rest}"
    return published
