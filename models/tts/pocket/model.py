"""Pocket TTS's flow LM: a causal transformer over [voice ; text ; latents] and a one-step flow head.

Sequence of one chunk (the release's layout)::

    [BOS_voice] [voice_1 .. voice_P] [text_1 .. text_T] [BOS] [z_1 .. z_N]

Voice frames are Mimi latents of a reference clip times ``speaker_proj_weight``; text tokens come from a
(low-rank) lookup table; latents enter through ``input_linear`` (normalised: ``(z - emb_mean) / emb_std``).
The output at each latent position gives an end-of-speech logit (``out_eos``) and conditions the flow head
(an AdaLN residual MLP, ``flow_net``) that turns Gaussian noise into the next latent in one step.

Module and parameter names follow the release's state dict, so loading is a plain key mapping. Attention
runs against a :class:`~models.cache.RingKVCache` (one slot per session, labels = positions), the same code
for the flow LM and Mimi's transformers; :func:`attention_layers` is that shared causal stack.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.cache import RingKVCache, offline_mask, slot_rows
from models.tts.pocket.config import PocketConfig, TransformerShape


def apply_rope(x: torch.Tensor, positions: torch.Tensor, max_period: float) -> torch.Tensor:
    """Rotate (B, T, H, D) by positions (B, T): interleaved pairs, float32 angles (the release's layout)."""
    b, t, h, d = x.shape
    freqs = torch.exp(torch.arange(d // 2, device=x.device, dtype=torch.float32) * (-math.log(max_period) * 2 / d))
    angles = freqs * positions.to(torch.float32)[..., None, None]  # (B, T, 1, D/2)
    cos, sin = torch.cos(angles), torch.sin(angles)
    pairs = x.view(b, t, h, d // 2, 2).float()
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.to(x.dtype).view(b, t, h, d)


class LayerScale(nn.Module):
    """Per-channel residual scale (Mimi's transformers)."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        return self.scale * x


class Attention(nn.Module):
    """Fused QKV projection with grouped-query heads; keys are stored rotated, so the cache order is free."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        self.shape = shape
        kv_width = shape.kv_heads * shape.head_dim
        self.in_proj = nn.Linear(shape.d_model, shape.width + 2 * kv_width, bias=False)
        self.out_proj = nn.Linear(shape.width, shape.d_model, bias=False)

    def qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries (B, T, H, D), keys and values (B, T, H_kv, D)."""
        s = self.shape
        b, t, _ = x.shape
        projected = self.in_proj(x)
        q = projected[..., : s.width].view(b, t, s.num_heads, s.head_dim)
        k, v = projected[..., s.width:].view(b, t, 2, s.kv_heads, s.head_dim).unbind(dim=2)
        return apply_rope(q, positions, s.max_period), apply_rope(k, positions, s.max_period), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Q (B, T, H, D) against k/v (B, S, H_kv, D) under mask (B, 1, T, S); returns (B, T, C)."""
        group = self.shape.num_heads // self.shape.kv_heads
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, H_kv, S, D)
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, mask)  # (B, H, T, D)
        return self.out_proj(x.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1))


class Layer(nn.Module):
    """Pre-norm block: attention, then a GELU feed-forward (tanh approximation), optional layer scales."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        self.self_attn = Attention(shape)
        self.norm1 = nn.LayerNorm(shape.d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(shape.d_model, eps=1e-5)
        self.linear1 = nn.Linear(shape.d_model, shape.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(shape.dim_feedforward, shape.d_model, bias=False)
        scale = shape.layer_scale
        self.layer_scale_1 = nn.Identity() if scale is None else LayerScale(shape.d_model, scale)
        self.layer_scale_2 = nn.Identity() if scale is None else LayerScale(shape.d_model, scale)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual feed-forward half of the block."""
        return x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)), approximate="tanh")))


class Transformer(nn.Module):
    """A stack of :class:`Layer` (``transformer.layers.N`` in the release's names)."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        self.shape = shape
        self.layers = nn.ModuleList(Layer(shape) for _ in range(shape.num_layers))


def attention_layers(
    transformer: Transformer,
    x: torch.Tensor,
    positions: torch.Tensor,
    cache: RingKVCache | None = None,
    slots: list[int] | torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    used: int | None = None,
    kv_out: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Run (B, T, C) through the stack at positions (B, T).

    With a cache: the new entries' ring indices (B, T) are claimed by the caller and labelled (``cache.
    reserve``, or :func:`claim` inside a captured step); each layer writes its keys/values there, then every
    query attends to the visible entries — its own new ones included — among the first ``used`` of each slot
    (all when None: fixed shapes for a CUDA graph). Without a cache: one causal pass over the sequence
    (offline); ``kv_out`` then collects each layer's keys/values (a voice prompt's state). The window is the
    shape's ``context`` (else the cache's).
    """
    shape = transformer.shape
    if cache is None:
        mask = offline_mask(positions, shape.context or (x.shape[1] + 1))
    else:
        rows = slot_rows(slots, cache.k.device)
        mask = cache.mask(slots, positions, window=shape.context)
        end = cache.capacity if used is None else used
        mask = mask[..., :end]
    for i, layer in enumerate(transformer.layers):
        attn = layer.self_attn
        q, k, v = attn.qkv(layer.norm1(x), positions)
        if cache is not None:
            cache.write(i, slots, index, k, v)
            k, v = cache.k[i, :, :end][rows], cache.v[i, :, :end][rows]  # only entries that can be visible
        elif kv_out is not None:
            kv_out.append((k, v))
        x = x + layer.layer_scale_1(attn.attend(q, k, v, mask))
        x = layer.feed_forward(x)
    return x


def claim(cache: RingKVCache, rows: torch.Tensor, index: torch.Tensor, positions: torch.Tensor) -> None:
    """Label ring entries ``index`` (B, T) of slots ``rows`` (B,) with ``positions``.

    Tensor ops only, so a captured step can do it; the host keeps ``num_written`` (:func:`advance_written`).
    """
    cache.labels[rows[:, None], index] = positions


def advance_written(cache: RingKVCache, slots: list[int], count: int) -> None:
    """Host bookkeeping after :func:`claim`: ``count`` more entries written in each slot."""
    cache.num_written[torch.as_tensor(slots, dtype=torch.long)] += count


class VarianceNorm(nn.Module):
    """``x * alpha / sqrt(var(x) + eps)`` without centring (the flow head's time-embedding norm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.alpha = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        var = self.eps + x.var(dim=-1, keepdim=True)
        return (x * (self.alpha.to(var) * torch.rsqrt(var))).to(x.dtype)


class PlainLayerNorm(nn.Module):
    """LayerNorm written out (the head's own form; optional affine)."""

    def __init__(self, channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        mean = x.mean(dim=-1, keepdim=True)
        x = (x - mean) / torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + self.eps)
        return x * self.weight + self.bias if hasattr(self, "weight") else x


class TimestepEmbedder(nn.Module):
    """Scalar time -> cos/sin features (256) -> MLP -> variance norm."""

    def __init__(self, hidden: int, num_freqs: int = 256, max_period: float = 10_000.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_freqs, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 VarianceNorm(hidden))
        half = num_freqs // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        args = t * self.freqs.to(t.dtype)
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class AdaLNBlock(nn.Module):
    """Residual MLP block modulated (shift, scale, gate) by the condition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_ln = PlainLayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    """Modulated norm and the output projection."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = PlainLayerNorm(channels, affine=False)
        self.linear = nn.Linear(channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """The flow net: (condition, times..., x) -> velocity / sample, an AdaLN MLP (``flow_net``)."""

    def __init__(self, latent_dim: int, width: int, cond_dim: int, depth: int, num_time_conds: int) -> None:
        super().__init__()
        self.num_time_conds = num_time_conds
        self.time_embed = nn.ModuleList(TimestepEmbedder(width) for _ in range(num_time_conds))
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(latent_dim, width)
        self.res_blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, latent_dim)

    def forward(self, c: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        times, x = args[:-1], args[-1]
        x = self.input_proj(x)
        y = self.cond_embed(c)
        if self.num_time_conds:
            y = y + sum(emb(t) for emb, t in zip(self.time_embed, times, strict=True)) / self.num_time_conds
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def sample(self, c: torch.Tensor, noise: torch.Tensor, flow_type: str, num_steps: int) -> torch.Tensor:
        """A latent from noise (B, D) under condition c (B, C), per the release's sampler."""
        if flow_type == "pointwise":
            return noise + self(c, noise)
        if flow_type == "drifting":
            return self(c, noise)
        ones = torch.ones_like(noise[..., :1])
        x = noise
        for i in range(num_steps):
            if flow_type == "lsd":  # Lagrangian self-distillation: jump from s to t
                x = x + self(c, i / num_steps * ones, (i + 1) / num_steps * ones, x) / num_steps
            else:  # flow matching, Euler
                x = x + self(c, i / num_steps * ones, x) / num_steps
        return x


class Conditioner(nn.Module):
    """Text token table, low-rank when the release says so (``conditioner.embed`` / ``.proj``)."""

    def __init__(self, n_bins: int, dim: int, rank: int | None) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_bins + 1, rank or dim)  # + 1: the padding entry
        self.proj = None if rank is None else nn.Linear(rank, dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Apply the module."""
        x = self.embed(ids)
        return x if self.proj is None else self.proj(x)


class FlowLM(nn.Module):
    """The release's ``flow_lm``: backbone, text table, flow head, EOS head, latent statistics, voice input."""

    def __init__(self, cfg: PocketConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, ldim = cfg.backbone.d_model, cfg.latent_dim
        self.conditioner = Conditioner(cfg.n_bins, cfg.lut_dim, cfg.lut_rank)
        self.flow_net = FlowHead(ldim, cfg.flow_dim, cfg.z_dim or d, cfg.flow_depth, cfg.num_time_conds)
        self.register_buffer("emb_std", torch.ones(ldim))
        self.register_buffer("emb_mean", torch.zeros(ldim))
        self.bos_emb = nn.Parameter(torch.zeros(ldim))
        if cfg.insert_bos_before_voice:
            self.bos_before_voice = nn.Parameter(torch.zeros(1, 1, d))
        self.input_linear = nn.Linear(ldim, d, bias=False)
        self.transformer = Transformer(cfg.backbone)
        self.out_norm = nn.LayerNorm(d, eps=1e-5)
        self.z_proj = None if cfg.z_dim is None else nn.Linear(d, cfg.z_dim, bias=False)
        self.out_eos = nn.Linear(cfg.z_dim or d, 1)
        inner = cfg.inner_dim or cfg.encoder.dimension
        self.speaker_proj_weight = nn.Parameter(torch.zeros(d, inner))

    def voice_prefix(self, latents: torch.Tensor) -> torch.Tensor:
        """Backbone inputs (1, P, C) of a voice from Mimi latents (1, N, D) of a clip."""
        x = F.linear(latents.float(), self.speaker_proj_weight)
        if self.cfg.insert_bos_before_voice:
            x = torch.cat([self.bos_before_voice, x], dim=1)
        return x

    def latent_in(self, latents: torch.Tensor) -> torch.Tensor:
        """Backbone inputs of normalised latents (B, T, D); NaN rows stand for BOS."""
        return self.input_linear(torch.where(torch.isnan(latents), self.bos_emb, latents))

    def heads(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output features (B, C_z) of backbone outputs (B, C): final norm and the optional projection."""
        out = self.out_norm(hidden)
        return out if self.z_proj is None else self.z_proj(out)

    def sample(self, z: torch.Tensor, noise: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(next normalised latent (B, D), EOS logit (B,)) from output features (B, C_z)."""
        latent = self.flow_net.sample(z, noise, self.cfg.flow_type, num_steps)
        return latent, self.out_eos(z)[:, 0]
