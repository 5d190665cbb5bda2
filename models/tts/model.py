"""The TTS model after CLEAR: causal AR transformer over [speaker ; phonemes ; latents] + MLP flow head.

One segment of speech (a clause or up to ~10 words) is one causal sequence:

    [SPK] [ph_1 ... ph_P] [BOS] [z_1 ... z_N]

- ``SPK`` is a speaker vector from the reference encoder (mean/std of a reference clip's VAE latents), the
  same path for trained voices (a stored vector) and zero-shot reference audio.
- The hidden state at ``BOS`` / ``z_i`` conditions a small residual MLP *flow head* that samples the next
  latent z_{i+1} with rectified flow (few Euler steps, classifier-free guidance against a learned null
  condition), and a *stop* logit that says the segment is over.
- Training adds a guided-attention loss on head 0 of every layer (a diagonal prior over latent→phoneme
  attention; without it alignment did not emerge in a CPU budget) and noise on the context latents
  (exposure bias: at inference the context is the model's own samples).

Streaming uses :meth:`TTSModel.step_core`, which attends new tokens against a ring KV cache passed in as
tensors and returns the new keys/values instead of writing them, so the same function is exported to ONNX.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.audio.vae import VAEConfig
from models.cache import offline_mask
from models.flow import guided, time_grid
from models.layers import CachedSelfAttention, RMSNorm, Rope, SwiGLU, TimeEmbedding, attend, modulate


@dataclass
class TTSConfig:
    """Sizes and sampling settings of the AR transformer and flow head (the VAE has its own config)."""

    vocab_size: int = 80  # phoneme tokens incl. <pad>/<unk> (set from the phoneme inventory)
    dim: int = 256  # transformer width
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads (head 0 of each layer carries the guided-attention prior)
    ffn_hidden: int = 512  # SwiGLU hidden width
    latent_dim: int = 32  # VAE latent channels
    head_width: int = 256  # flow-head MLP width
    head_blocks: int = 3  # flow-head residual blocks
    flow_steps: int = 6  # Euler steps per latent
    cfg_scale: float = 2.0  # classifier-free guidance on the flow head (1 = off)
    temperature: float = 1.0  # scale of each latent's starting noise (lower: less varied, clearer)
    max_phonemes: int = 190  # phoneme tokens per segment (longer segments are split before this)
    window: int = 512  # KV cache entries per session: SPK + phonemes + BOS + latents of one segment
    frames_per_phoneme: float = 6.0  # cap on a segment's latents: this x phonemes + 10 (stop-head fallback)
    cond_drop: float = 0.1  # training: probability the flow head sees the null condition
    context_noise: float = 0.2  # training: max std of noise added to context latents
    guide_sigma: float = 0.25  # guided-attention width (fraction of the sequence)
    vae: VAEConfig = field(default_factory=VAEConfig)

    @classmethod
    def paper(cls, vocab_size: int = 80) -> TTSConfig:
        """CLEAR-Base sizes: 24 blocks of width 1024 (FFN 4096), 6-block width-1024 head, 10 steps, CFG 2.5."""
        return cls(vocab_size=vocab_size, dim=1024, num_layers=24, num_heads=16, ffn_hidden=2736,
                   head_width=1024, head_blocks=6, flow_steps=10, cfg_scale=2.5, window=1024)

    def to_dict(self) -> dict:
        """JSON-able form (stored in the checkpoint's metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TTSConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        vae = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("vae").items()})
        return cls(**d, vae=vae)

    def max_latents(self, num_phonemes: int) -> int:
        """Latents a segment of ``num_phonemes`` may produce before it is cut (also bounded by the window)."""
        return min(int(self.frames_per_phoneme * num_phonemes) + 10, self.window - num_phonemes - 2)


class Block(nn.Module):
    """Pre-norm transformer block: cached causal self-attention + SwiGLU."""

    def __init__(self, cfg: TTSConfig, rope: Rope) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim)
        self.attn = CachedSelfAttention(cfg.dim, cfg.num_heads, rope=rope)
        self.norm2 = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, cfg.ffn_hidden)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline pass over (B, T, C); also returns head 0's attention probabilities (B, T, T)."""
        b, t, c = x.shape
        q, k, v = self.attn.project(self.norm1(x), positions)  # each (B, T, H, D)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        y = attend(q, k, v, mask)
        scores = (q[:, 0] @ k[:, 0].transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, T, T), head 0
        probs = scores.masked_fill(~mask[:, 0], float("-inf")).softmax(-1)
        x = x + self.attn.out(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x)), probs

    def step(
        self, x: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New tokens (B, T, C) against cached keys/values (B, S, H, D); mask (B, 1, T, S + T).

        Returns the block output and the new tokens' keys and values (B, T, H, D) for the cache.
        """
        b, t, c = x.shape
        q, k, v = self.attn.project(self.norm1(x), positions)
        keys = torch.cat([k_cache, k], dim=1).transpose(1, 2)  # (B, H, S + T, D)
        values = torch.cat([v_cache, v], dim=1).transpose(1, 2)
        y = attend(q.transpose(1, 2), keys, values, mask)
        x = x + self.attn.out(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x)), k, v


class FlowHead(nn.Module):
    """Per-token residual MLP with adaLN (as in MAR / CLEAR) predicting the rectified-flow velocity.

    The adaLN parameters of every block come from one linear map of the condition (fused: one matmul
    per evaluation instead of one per block, which matters on a CPU at batch 1).
    """

    def __init__(self, cfg: TTSConfig) -> None:
        super().__init__()
        w, n = cfg.head_width, cfg.head_blocks
        self.width, self.num_blocks = w, n
        self.inp = nn.Linear(cfg.latent_dim, w)
        self.cond = nn.Linear(cfg.dim, w)
        self.null = nn.Parameter(torch.zeros(cfg.dim))  # the dropped condition (classifier-free guidance)
        self.time = TimeEmbedding(w)
        self.mod = nn.Linear(w, (3 * n + 2) * w)  # (shift, scale, gate) per block + final (shift, scale)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w)) for _ in range(n))
        self.out = nn.Linear(w, cfg.latent_dim)
        nn.init.zeros_(self.mod.weight)  # adaLN-zero: every block starts as the identity
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Velocity for noisy latents x (N, D) at times t (N,) given conditions h (N, dim)."""
        return self.velocity(x, self.cond(h) + self.time(t))

    def velocity(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Velocity given the pre-activation condition c = cond(h) + time(t), (N, width)."""
        mods = self.mod(F.silu(c)).chunk(3 * self.num_blocks + 2, dim=-1)
        y = self.inp(x)
        for i, mlp in enumerate(self.mlps):
            shift, scale, gate = mods[3 * i : 3 * i + 3]
            y = y + gate * mlp(modulate(F.layer_norm(y, (self.width,)), shift, scale))
        return self.out(modulate(F.layer_norm(y, (self.width,)), mods[-2], mods[-1]))

    def sample(self, h: torch.Tensor, noise: torch.Tensor, num_steps: int, cfg_scale: float) -> torch.Tensor:
        """Euler-integrate from noise (N, D) to a latent, guided against the null condition."""
        n = h.shape[0]
        guide = cfg_scale != 1.0
        cond = self.cond(torch.cat([h, self.null.expand_as(h)]) if guide else h)  # once per latent
        times = time_grid(num_steps, device=h.device)
        time_emb = self.time(times[:-1])  # (num_steps, width)
        x = noise
        for i in range(num_steps):
            v = self.velocity(torch.cat([x, x]) if guide else x, cond + time_emb[i])
            v = guided(v[:n], v[n:], cfg_scale) if guide else v
            x = x + (times[i + 1] - times[i]) * v
        return x


class TTSModel(nn.Module):
    """AR transformer + flow head + stop head over one segment's [SPK ; phonemes ; BOS ; latents]."""

    def __init__(self, cfg: TTSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.phoneme_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.latent_in = nn.Linear(cfg.latent_dim, cfg.dim)
        self.speaker_in = nn.Sequential(nn.Linear(2 * cfg.latent_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.bos = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        rope = Rope(cfg.dim // cfg.num_heads)
        self.blocks = nn.ModuleList(Block(cfg, rope) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim)
        self.stop = nn.Linear(cfg.dim, 1)
        self.head = FlowHead(cfg)

    # -- inputs ---------------------------------------------------------------------------------------
    def prefix(self, speaker: torch.Tensor, phoneme_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, 1 + P + 1, C) of [SPK ; phonemes ; BOS]; speaker (B, 2 * latent_dim)."""
        b = phoneme_ids.shape[0]
        spk = self.speaker_in(speaker)[:, None]  # (B, 1, C)
        return torch.cat([spk, self.phoneme_emb(phoneme_ids), self.bos.expand(b, 1, -1)], dim=1)

    # -- offline (training, reference) -----------------------------------------------------------------
    def forward(
        self, speaker: torch.Tensor, phoneme_ids: torch.Tensor, num_phonemes: torch.Tensor, latents: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One causal pass; latents (B, N, D) are the inputs after BOS (teacher forcing).

        phoneme_ids (B, Pmax) are right-padded to ``num_phonemes`` (B,): pads are invisible to every other
        token and positions skip them, so a padded row computes exactly what it would alone. Returns hidden
        states (B, 1 + Pmax + 1 + N, C) after the final norm and each layer's head-0 attention; the hidden
        state at BOS + i predicts latent i (and at BOS + N, the stop).
        """
        x = torch.cat([self.prefix(speaker, phoneme_ids), self.latent_in(latents)], dim=1)  # (B, T, C)
        b, t, _ = x.shape
        p_max = phoneme_ids.shape[1]
        idx = torch.arange(t, device=x.device)[None].expand(b, t)
        is_pad = (idx >= 1 + num_phonemes[:, None]) & (idx < 1 + p_max)
        shift = torch.where(idx >= 1 + p_max, p_max - num_phonemes[:, None], 0)
        labels = torch.where(is_pad, -1, idx - shift)  # true positions; -1 on pads
        pad_self = torch.eye(t, dtype=torch.bool, device=x.device) & is_pad[:, :, None]  # a pad sees itself only
        mask = offline_mask(labels, self.cfg.window) | pad_self[:, None]
        positions = labels.clamp_min(0)
        attns = []
        for block in self.blocks:
            x, probs = block(x, positions, mask)
            attns.append(probs)
        return self.norm(x), attns

    # -- streaming --------------------------------------------------------------------------------------
    def step_core(
        self, x: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded new tokens (B, T, C) at positions (B, T) against caches (L, B, S, H, D).

        ``mask`` (B, 1, T, S + T) says which cached and new keys each new token sees. Returns normed hidden
        states (B, T, C) and the new keys/values (L, B, T, H, D). Pure function of its inputs (ONNX-exportable).
        """
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, positions, k_cache[i], v_cache[i], mask)
            new_k.append(k)
            new_v.append(v)
        return self.norm(x), torch.stack(new_k), torch.stack(new_v)

    def sample_next(self, h: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stop probabilities (N,) and sampled latents (N, D) from hidden states (N, C) and unit noise (N, D)."""
        stop = torch.sigmoid(self.stop(h)[:, 0])
        return stop, self.head.sample(h, self.cfg.temperature * noise, self.cfg.flow_steps, self.cfg.cfg_scale)


def speaker_stats(latents: torch.Tensor) -> torch.Tensor:
    """Reference-encoder input: per-channel mean and std (2 * D,) of normalised latents (T, D)."""
    return torch.cat([latents.mean(0), latents.std(0, unbiased=False)])


def guided_attention_loss(
    attn: torch.Tensor, num_phonemes: torch.Tensor, num_latents: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Diagonal prior on latent→phoneme attention (Tachibana et al. 2017).

    attn: (B, T, T) probabilities over the sequence layout [SPK, P phonemes (padded to Pmax), BOS, latents];
    the attention of latent query i to phoneme j, renormalised over phonemes, is penalised by
    1 - exp(-(j / P - i / N)^2 / (2 sigma^2)).
    """
    n_max = int(num_latents.max())
    p_pad = int(num_phonemes.max())
    start = 1 + p_pad  # BOS index: its hidden state predicts latent 0
    a = attn[:, start : start + n_max, 1 : 1 + p_pad]  # (B, N, P)
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-6)
    rows = torch.arange(n_max, device=attn.device)[None, :, None]
    cols = torch.arange(p_pad, device=attn.device)[None, None, :]
    i = rows / num_latents[:, None, None].clamp_min(1)
    j = cols / num_phonemes[:, None, None].clamp_min(1)
    weight = 1 - torch.exp(-((j - i) ** 2) / (2 * sigma**2))
    valid = (rows < num_latents[:, None, None]) & (cols < num_phonemes[:, None, None])
    return (a * weight * valid).sum() / valid.any(-1).sum().clamp_min(1)
