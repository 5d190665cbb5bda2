"""MeanVC's decoder in our code: the chunk-wise autoregressive mean-flow DiT and its timbre encoder (MRTE).

The module tree mirrors the published ``model_200ms.safetensors`` (``t_time_embed.time_mlp.{0,2}``,
``r_time_embed``, ``input_embed.proj``, ``cache_embed``, ``timbre_encoder.prompt_vp_encoders.{i}.*``,
``timbre_encoder.vp_proj``, ``transformer_blocks.{i}.attn_norm.linear``, ``.attn.{to_q,to_k,to_v,q_norm,k_norm,
to_out.0}``, ``.ff.ff.{0.0,2}``, ``norm_out.linear``, ``proj_out``), so the loader's key mapping is the identity
and :func:`models.weights.load_mapped` checks every key and shape.

What a chunk sees (MeanVC's inference, ``src/infer/dit_kvcache.py``): the tokens of one pass are the
previous chunk's *clean* mel through ``cache_embed`` (the "cache" chunk) followed by the noisy chunk through
``input_embed`` (noisy mel, timbre-aware content, speaker vector). Attention is block-causal over chunks
with a look-back of ``lookback_chunks`` (5): the cache chunk sees itself and the clean chunks before it,
the noisy chunk sees itself, the cache chunk and the clean chunks before. Keys carry rotary positions of
their absolute frame (x_transformers' interleaved pairs), queries and keys are RMS-normed per head, every
token is modulated by the step's flow times (t, r) through adaLN. A chunk's clean keys/values are the ones
computed while it was the cache chunk, in the last denoising pass of the step after it was generated.

:meth:`MeanVCDiT.run` is the one attention core: tokens plus optional earlier keys/values (already rotated)
under a visibility mask. Offline passes (:meth:`forward_offline`) and the serving path
(``models/vc/meanvc/stream.py``, keys/values in a :class:`~models.cache.RingKVCache`) both call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiTConfig:
    """The DiT's sizes; defaults are MeanVC's released ``config_200ms.json``."""

    dim: int = 512
    depth: int = 4
    heads: int = 2
    head_dim: int = 64  # not in the config file: the DiT's default
    ff_mult: int = 2
    mel_dim: int = 80
    bn_dim: int = 256  # content (ASR bottleneck) width, also the MRTE's width
    spk_dim: int = 256  # speaker vector width (the MRTE's vp_proj input)
    chunk_frames: int = 20  # the chunk the released model was trained with (200 ms)
    lookback_chunks: int = 5  # clean chunks a chunk attends to
    mrte_heads: int = 4
    mrte_blocks: int = 2
    time_freq_dim: int = 256

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]], **overrides) -> DiTConfig:
        """The config a published state dict's shapes imply (head count and chunk are not in the tensors)."""
        dim = shapes["input_embed.proj.weight"][0]
        mel = shapes["proj_out.weight"][0]
        bn, spk = shapes["timbre_encoder.vp_proj.weight"]
        depth = len({k.split(".")[1] for k in shapes if k.startswith("transformer_blocks.")})
        mrte = len({k.split(".")[2] for k in shapes if k.startswith("timbre_encoder.prompt_vp_encoders.")})
        fields = dict(dim=dim, depth=depth, mel_dim=mel, bn_dim=bn, mrte_blocks=mrte, spk_dim=spk,
                      head_dim=shapes["transformer_blocks.0.attn.q_norm.weight"][0],
                      ff_mult=shapes["transformer_blocks.0.ff.ff.0.0.weight"][0] // dim,
                      time_freq_dim=shapes["t_time_embed.time_mlp.0.weight"][1])
        fields["heads"] = shapes["transformer_blocks.0.attn.to_q.weight"][0] // fields["head_dim"]
        return cls(**{**fields, **overrides})


# -- small parts, in the published naming ------------------------------------------------------------------
def sinusoid(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) -> (B, dim): [sin, cos] of scale * t at frequencies 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angle = scale * t.float()[:, None] * freqs[None]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class TimestepEmbedding(nn.Module):
    """A flow time (B,) -> (B, dim): sinusoid then a SiLU MLP."""

    def __init__(self, dim: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embedding of times."""
        return self.time_mlp(sinusoid(t, self.freq_dim))


class InputEmbedding(nn.Module):
    """Noisy mel, timbre-aware content and the speaker vector, concatenated and projected."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.mel_dim + cfg.bn_dim + cfg.spk_dim, cfg.dim)  # published: 80 + 256 + 256

    def forward(self, x: torch.Tensor, cond: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """(B, T, mel), (B, T, bn), (B, spk) -> (B, T, dim)."""
        return self.proj(torch.cat([x, cond, spk[:, None].expand(-1, x.shape[1], -1)], dim=-1))


class MultiHeadAttention(nn.Module):
    """Plain multi-head attention with separate input widths (the MRTE's cross-attention)."""

    def __init__(self, heads: int, width: int, q_in: int, k_in: int, v_in: int) -> None:
        super().__init__()
        self.heads, self.d_k = heads, width // heads
        self.linear_q, self.linear_k = nn.Linear(q_in, width), nn.Linear(k_in, width)
        self.linear_v, self.linear_out = nn.Linear(v_in, width), nn.Linear(width, width)

    def memory(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values (B, H, S, d_k) of a memory."""
        b, s, _ = key.shape
        k = self.linear_k(key).view(b, s, self.heads, self.d_k).transpose(1, 2)
        return k, self.linear_v(value).view(b, s, self.heads, self.d_k).transpose(1, 2)

    def forward(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Query (B, T, q_in) against projected memory; ``mask`` (B, 1, 1, S) bool or None."""
        b, t, _ = query.shape
        q = self.linear_q(query).view(b, t, self.heads, self.d_k).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.linear_out(y.transpose(1, 2).reshape(b, t, -1))


class FeedForwardReLU(nn.Module):
    """The MRTE's position-wise feed-forward (ReLU)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feed-forward."""
        return self.w_2(F.relu(self.w_1(x)))


class MRTELayer(nn.Module):
    """Content queries attend to the reference (post-norm), then a feed-forward."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        width = cfg.bn_dim
        self.self_attn = MultiHeadAttention(cfg.mrte_heads, width, width, cfg.mel_dim + width, cfg.mel_dim)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ffn = FeedForwardReLU(width)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One layer."""
        x = self.norm1(x + self.self_attn(x, k, v, mask))
        return self.norm2(x + self.ffn(x))


class MRTE(nn.Module):
    """Timbre encoder: content frames (B, T, bn) attend to the reference mel, keyed also by the speaker vector.

    Each frame is conditioned on its own (no mixing over time), so a stream's chunks give the offline result.
    Every layer attends to the same memory: the reference mel (values) and mel + projected speaker vector
    (keys), so its projections are computed once per reference (:meth:`memory`).
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.prompt_vp_encoders = nn.ModuleList(MRTELayer(cfg) for _ in range(cfg.mrte_blocks))
        self.vp_proj = nn.Linear(cfg.spk_dim, cfg.bn_dim, bias=False)

    def memory(self, prompt: torch.Tensor, spk: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Reference mel (B, S, mel) and speaker (B, spk) -> per-layer keys and values (B, H, S, d_k)."""
        key = torch.cat([prompt, self.vp_proj(spk)[:, None].expand(-1, prompt.shape[1], -1)], dim=-1)
        return [layer.self_attn.memory(key, prompt) for layer in self.prompt_vp_encoders]

    def forward(self, content: torch.Tensor, memory: list[tuple[torch.Tensor, torch.Tensor]],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Timbre-aware content (B, T, bn); ``mask`` (B, S) marks the memory's real frames (None: all)."""
        attn_mask = None if mask is None else mask[:, None, None, :]
        for layer, (k, v) in zip(self.prompt_vp_encoders, memory, strict=True):
            content = layer(content, k, v, attn_mask)
        return content


class AdaNorm(nn.Module):
    """The projection of the time embedding to a block's modulations (``attn_norm`` / ``norm_out``)."""

    def __init__(self, dim: int, num: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num * dim)

    def forward(self, temb: torch.Tensor) -> list[torch.Tensor]:
        """(B, dim) -> ``num`` tensors (B, 1, dim)."""
        return list(self.linear(F.silu(temb))[:, None].chunk(self.linear.out_features // temb.shape[-1], dim=-1))


class Attention(nn.Module):
    """Projections of the DiT's self-attention (the computation is in :meth:`MeanVCDiT.run`)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.head_dim
        self.to_q, self.to_k, self.to_v = (nn.Linear(cfg.dim, inner) for _ in range(3))
        self.q_norm, self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6), nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(inner, cfg.dim), nn.Dropout(0.0)])


class FeedForward(nn.Module):
    """GELU (tanh) MLP, in the published nesting (``ff.ff.0.0``, ``ff.ff.2``)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        hidden = cfg.dim * cfg.ff_mult
        self.ff = nn.Sequential(nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(approximate="tanh")),
                                nn.Dropout(0.0), nn.Linear(hidden, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """MLP."""
        return self.ff(x)


class Block(nn.Module):
    """adaLN-Zero block: modulated attention and MLP, each gated."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.attn_norm = AdaNorm(cfg.dim, 6)
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg)


def rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, T, H, D) by position * 10000^(-2i/D) (angles in float64)."""
    d = x.shape[-1]
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    angle = positions.to(torch.float64)[..., None] * inv_freq  # (B, T, D/2)
    rot = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)[:, :, None]  # (B, T, 1, D/2)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * rot).reshape(x.shape).to(x.dtype)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without parameters (eps 1e-6), as every DiT norm."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class MeanVCDiT(nn.Module):
    """The published DiT: u(x, t, r) for a chunk of noisy mel given the clean chunks before it."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.t_time_embed = TimestepEmbedding(cfg.dim, cfg.time_freq_dim)
        self.r_time_embed = TimestepEmbedding(cfg.dim, cfg.time_freq_dim)
        self.input_embed = InputEmbedding(cfg)
        self.cache_embed = nn.Linear(cfg.mel_dim, cfg.dim)
        self.timbre_encoder = MRTE(cfg)
        self.transformer_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = AdaNorm(cfg.dim, 2)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def time_embedding(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(B,), (B,) -> (B, dim): the sum of both times' embeddings."""
        return self.t_time_embed(t) + self.r_time_embed(r)

    def run(self, x: torch.Tensor, temb: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
            past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
            ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The blocks over tokens x (B, N, dim) at frame ``positions`` (B, N).

        ``past``: per layer, earlier keys/values (B, S, H, hd), keys already rotated; ``mask`` (B, 1, N, S + N)
        bool: which of [past ; tokens] each token sees. Returns the output (B, N, dim) and every layer's
        keys (rotated) and values of the tokens (B, N, H, hd).
        """
        b, n, _ = x.shape
        h, hd = self.cfg.heads, self.cfg.head_dim
        own = []
        for i, block in enumerate(self.transformer_blocks):
            shift1, scale1, gate1, shift2, scale2, gate2 = block.attn_norm(temb)
            hn = layer_norm(x) * (1 + scale1) + shift1
            attn = block.attn
            q = rotary(attn.q_norm(attn.to_q(hn).view(b, n, h, hd)), positions)
            k = rotary(attn.k_norm(attn.to_k(hn).view(b, n, h, hd)), positions)
            v = attn.to_v(hn).view(b, n, h, hd)
            own.append((k, v))
            if past is not None:
                k, v = torch.cat([past[i][0], k], dim=1), torch.cat([past[i][1], v], dim=1)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
            x = x + gate1 * attn.to_out[0](y.transpose(1, 2).reshape(b, n, h * hd))
            x = x + gate2 * block.ff(layer_norm(x) * (1 + scale2) + shift2)
        return x, own

    def head(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Final modulation (scale, then shift) and projection to mel."""
        scale, shift = self.norm_out(temb)
        return self.proj_out(layer_norm(x) * (1 + scale) + shift)

    def forward_offline(self, clean: torch.Tensor, noisy: torch.Tensor, cond: torch.Tensor, spk: torch.Tensor,
                        t: torch.Tensor, r: torch.Tensor, chunk: int, lookback: int | None = None) -> torch.Tensor:
        """U of every noisy chunk at once, each against the clean chunks before it (one pass, one (t, r)).

        ``clean``/``noisy`` (B, T, mel), ``cond`` (B, T, bn) timbre-aware content, ``spk`` (B, spk_dim), t/r (B,).
        Equal to streaming one chunk at a time with one denoising step (tested): the clean chunks' keys are
        the ones streaming computes with the same (t, r).
        """
        b, num, _ = noisy.shape
        lookback = self.cfg.lookback_chunks if lookback is None else lookback
        x = torch.cat([self.cache_embed(clean), self.input_embed(noisy, cond, spk)], dim=1)
        frames = torch.arange(num, device=noisy.device)
        positions = frames.repeat(2)[None].expand(b, -1)
        c = frames // chunk
        qc, kc = c[:, None], c[None, :]
        clean_clean = (kc <= qc) & (kc >= qc - lookback)
        noisy_clean = (kc < qc) & (kc >= qc - lookback)
        noisy_noisy = kc == qc
        mask = torch.cat([torch.cat([clean_clean, torch.zeros_like(clean_clean)], 1),
                          torch.cat([noisy_clean, noisy_noisy], 1)], 0)[None, None]
        temb = self.time_embedding(t, r)
        y, _ = self.run(x, temb, positions, mask)
        return self.head(y[:, num:], temb)
