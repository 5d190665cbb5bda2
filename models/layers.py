"""Transformer building blocks shared by every family: norms, rotary positions, cached attention, MLPs.

The one idea here is *cached attention that streams exactly*: :class:`CachedSelfAttention` runs either
over a whole sequence with a visibility mask (offline, training) or one chunk at a time against a
:class:`~models.cache.RingKVCache` (streaming), and both paths use the same visibility rule
(:func:`models.cache.visible`), so chunked generation equals one causal pass. Keys are cached after rotary
encoding with absolute positions, so the ring's order never matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.cache import RingKVCache


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rope(nn.Module):
    """Rotary position embedding over one or more axes (1D for tokens; time/row/column for video).

    ``axes_dims`` split the head dimension (each even); positions are (B, T, num_axes) ints. Angles are
    computed in float64 so hour-long streams (positions ~1e6) keep their relative precision.
    """

    def __init__(self, head_dim: int, axes_dims: Sequence[int] | None = None, theta: float = 10_000.0) -> None:
        super().__init__()
        axes_dims = tuple(axes_dims or (head_dim,))
        if sum(axes_dims) != head_dim or any(d % 2 for d in axes_dims):
            raise ValueError(f"axes dims {axes_dims} must be even and sum to head_dim {head_dim}")
        self.axes_dims = axes_dims
        self.theta = theta

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, T, head_dim / 2) float64 rotation angles for integer positions (B, T) or (B, T, axes)."""
        if positions.dim() == 2:
            positions = positions[..., None]
        parts = []
        for axis, dim in enumerate(self.axes_dims):
            freqs = self.theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
            parts.append(positions[..., axis].double()[..., None] * freqs)
        return torch.cat(parts, dim=-1)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines and sines (B, T, 1, D/2) for :meth:`rotate`: compute once, rotate every layer's q and k."""
        ang = self.angles(positions)[:, :, None, :]
        return ang.cos().to(dtype), ang.sin().to(dtype)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate adjacent pairs of x (B, T, H, D) by precomputed angles."""
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, T, H, D) by its positions."""
        return self.rotate(x, *self.cos_sin(positions, x.dtype))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, explicit: bool = False):
    """Scaled dot-product attention over (B, H, T, D) tensors with a boolean visibility mask.

    ``explicit`` writes the softmax out, for forward-mode autodiff (``torch.func.jvp``, MeanFlow
    training), which fused SDPA kernels do not support on CPU.
    """
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


class CachedSelfAttention(nn.Module):
    """Multi-head self-attention that runs offline over a sequence or streams against a ring KV cache."""

    def __init__(self, dim: int, num_heads: int, rope: Rope | None = None, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError("dim must be divisible by num_heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rope = rope
        # Normalised queries/keys keep attention logits bounded, which keeps long rollouts stable.
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.explicit = False  # set True for forward-mode AD

    def project(self, x: torch.Tensor, positions: torch.Tensor | None):
        """Queries, keys, values (B, T, H, D) of x (B, T, C), rotated by positions."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).unbind(2)  # each (B, T, H, D)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and positions is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None,
        mask: torch.Tensor | None,
        cache: RingKVCache | None = None,
        layer: int = 0,
        slots: Sequence[int] | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend over x (B, T, C).

        Offline: ``mask`` is (B, 1, T, T). Streaming: pass ``cache``/``layer``/``slots`` and the ``index``
        from :meth:`RingKVCache.reserve`; ``mask`` is then (B, 1, T, cache.capacity).
        """
        b, t, c = x.shape
        q, k, v = self.project(x, positions)
        if cache is not None:
            cache.write(layer, slots, index, k, v)
            k, v = cache.read(layer, slots)  # (B, S, H, D)
        y = attend(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype), mask, self.explicit)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class CrossAttention(nn.Module):
    """Attention from a stream to a fixed condition (text tokens, reference speech).

    The condition's keys/values depend only on the condition, so callers compute them once per
    condition with :meth:`condition_kv` and reuse them every step (a prompt switch recomputes them).
    """

    def __init__(self, dim: int, cond_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(cond_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.explicit = False

    def condition_kv(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, S, D) of a condition (B, S, cond_dim)."""
        b, s, _ = cond.shape
        k, v = self.kv(cond).view(b, s, 2, self.num_heads, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None):
        """Attend x (B, T, C) to precomputed condition keys/values; mask (B, 1, 1, S) hides padding."""
        b, t, c = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        y = attend(q, kv[0], kv[1], mask, self.explicit)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class SwiGLU(nn.Module):
    """Gated MLP (as in LLaMA): ``hidden`` is the width of each of the two input projections."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP."""
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(a) * b)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Apply adaLN modulation (DiT): x * (1 + scale) + shift, with shift/scale broadcast over tokens."""
    return x * (1 + scale) + shift


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of a flow time t in [0, 1] followed by an MLP.

    Frequencies span 1..``max_freq`` in units of t (not 1000·t): derivatives with respect to t stay
    moderate, which MeanFlow's d/dt term needs (a 1000·t embedding made it diverge in a probe here).
    """

    def __init__(self, dim: int, num_freqs: int = 64, max_freq: float = 100.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.logspace(0, math.log10(max_freq), num_freqs) * math.pi, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed t of shape (B,) or (B, T) -> (..., dim)."""
        ang = t[..., None].float() * self.freqs
        return self.mlp(torch.cat([ang.sin(), ang.cos()], dim=-1).to(self.mlp[0].weight.dtype))
