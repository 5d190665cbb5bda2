"""The Wan2.1 DiT (LongLive's block-causal generator) stepping on the shared ring KV cache.

Module names follow Wan's original checkpoints (``blocks.N.self_attn.q``, ``head.modulation``...), which is
how LongLive saves its generator (with a ``model.`` prefix); :func:`diffusers_key` maps diffusers' naming
(``WanTransformer3DModel``) onto ours, so either layout loads through :func:`models.weights.load_mapped`.

The network (Wan2.1): latents (16, F, h, w) are cut into 1x2x2 patches (a Conv3d, run here as a linear on
patch vectors); a sinusoidal timestep embedding (256 wide) goes through an MLP and a projection to six
modulation vectors per block (shift/scale/gate for self-attention and FFN) added to each block's own
``modulation`` table; self-attention has RMS-normed queries/keys (over all heads) and 3D RoPE (head dim split
time/row/column as d - 4(d//6), 2(d//6), 2(d//6)); cross-attention to 512 umT5 tokens (padding positions
are zero vectors, not masked) follows a LayerNorm with affine; a GELU(tanh) FFN; a modulated output head.

Streaming (LongLive): a block is ``block_frames`` latent frames. Each denoising pass writes the block's K/V
into the session's ring slot, attends over [sink | window | block], then rewinds them; the final t = 0 pass
on the clean block writes them for good. Labels are block indices, so :func:`models.cache.visible` gives
the block-causal rule with a frame sink (the first block) and a window (the 2 blocks before the current
one): LongLive's ``local_attn_size = 12`` frames with a 3-frame sink. Once a slot's ring is full, every
cached entry is visible to the new block, so the hot path passes no mask at all (SDPA may then use its
flash or cuDNN kernels); before that a boolean mask hides the empty entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.cache import RingKVCache, offline_mask
from models.graphs import BucketGraphs
from models.layers import Rope


@dataclass(frozen=True)
class WanConfig:
    """Shape of a Wan2.1 DiT and LongLive's streaming schedule."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_channels: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512  # umT5 tokens the DiT sees (padding: zero vectors)
    freq_dim: int = 256
    eps: float = 1e-6
    latent_h: int = 60  # 480 / 8
    latent_w: int = 104  # 832 / 8
    block_frames: int = 3  # LongLive num_frame_per_block
    sink_blocks: int = 1  # LongLive sink_size = 3 frames
    window_blocks: int = 2  # local_attn_size 12 frames = sink 3 + 2 past blocks + the current block
    # LongLive's denoising_step_list with warp_denoising_step: steps on the uniform grid, then shifted
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    num_train_timesteps: int = 1000

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame."""
        return (self.latent_h // self.patch[1]) * (self.latent_w // self.patch[2])

    @property
    def tokens_per_block(self) -> int:
        """Tokens of one block."""
        return self.block_frames * self.tokens_per_frame

    @property
    def patch_dim(self) -> int:
        """Values of one patch (channels x patch volume)."""
        return self.in_channels * math.prod(self.patch)

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Head-dim split (time, row, column), as Wan."""
        d = self.head_dim
        return (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))

    def sigmas(self) -> list[float]:
        """Noise level of each denoising step (LongLive: 1, 0.9375, 0.8333, 0.625 for shift 5)."""
        out = []
        for step in self.denoising_steps:
            s = step / self.num_train_timesteps
            out.append(self.shift * s / (1 + (self.shift - 1) * s))
        return out

    def describe(self) -> dict[str, Any]:
        """Fields and derived sizes, JSON-able."""
        sigmas = [round(s, 4) for s in self.sigmas()]
        return {**asdict(self), "tokens_per_block": self.tokens_per_block, "sigmas": sigmas}

    @classmethod
    def longlive(cls) -> WanConfig:
        """Wan2.1-T2V-1.3B at 832x480, LongLive's schedule."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> WanConfig:
        """A seconds-fast shape for tests (same structure, small widths)."""
        base = cls(dim=24, ffn_dim=48, num_heads=2, num_layers=2, in_channels=4, text_dim=16, text_len=8,
                   freq_dim=16, latent_h=4, latent_w=6, block_frames=2)
        return replace(base, **overrides)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of t * 10000^(-i/half), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = t.double()[..., None] * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


class WanSelfAttention(nn.Module):
    """Q/K/V/O projections with RMS-normed queries and keys; roped keys go to the ring cache."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q = nn.RMSNorm(d, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(d, eps=cfg.eps)

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """Roped queries and keys, values: each (B, T, H, D); ``rope`` is :meth:`Rope.cos_sin`'s pair."""
        b, t, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, t, self.num_heads, self.head_dim)
        k = self.norm_k(self.k(x)).view(b, t, self.num_heads, self.head_dim)
        v = self.v(x).view(b, t, self.num_heads, self.head_dim)
        return Rope.rotate(q, *rope), Rope.rotate(k, *rope), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """SDPA over (B, T, H, D) queries and (B, S, H, D) keys/values, then the output projection."""
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype),
                                           v.transpose(1, 2).to(q.dtype), attn_mask=mask)
        return self.o(y.transpose(1, 2).flatten(2))


class WanCrossAttention(nn.Module):
    """Attention to the prompt's tokens; their keys/values are computed once per prompt."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q = nn.RMSNorm(d, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(d, eps=cfg.eps)

    def condition_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, S, D) of projected text (B, S, dim)."""
        b, s, _ = context.shape
        k = self.norm_k(self.k(context)).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(context).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Attend x (B, T, dim) to cached keys/values (no mask: Wan pads text with zero vectors)."""
        b, t, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, kv[0].to(q.dtype), kv[1].to(q.dtype))
        return self.o(y.transpose(1, 2).flatten(2))


class WanBlock(nn.Module):
    """Modulated self-attention, cross-attention, modulated GELU FFN (Wan2.1's attention block)."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = WanSelfAttention(cfg)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)  # Wan's cross_attn_norm (diffusers calls it norm2)
        self.cross_attn = WanCrossAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cross_kv: tuple[torch.Tensor, torch.Tensor],
                cache: RingKVCache | None = None, layer: int = 0, rows: slice | torch.Tensor | None = None,
                entries: torch.Tensor | None = None) -> torch.Tensor:
        """X (B, T, dim); e (B, 1 or T, 6, dim) float32 time projection; rope: (cos, sin); with ``cache``, streams."""
        m = (self.modulation.float() + e).unbind(2)  # shift, scale, gate (attention); shift, scale, gate (FFN)
        h = (_layer_norm(x, self.eps).float() * (1 + m[1]) + m[0]).to(x.dtype)
        q, k, v = self.self_attn.project(h, rope)
        if cache is not None:
            cache.write_entries(layer, entries, k, v)
            k, v = cache.read(layer, rows)
        y = self.self_attn.attend(q, k, v, mask)
        x = (x.float() + y.float() * m[2]).to(x.dtype)
        x = x + self.cross_attn(self.norm3(x), cross_kv)
        y = self.ffn((_layer_norm(x, self.eps).float() * (1 + m[4]) + m[3]).to(x.dtype))
        return (x.float() + y.float() * m[5]).to(x.dtype)


class WanHead(nn.Module):
    """Modulated LayerNorm and the projection back to patch values."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.patch_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """X (B, T, dim), temb (B, 1 or T, dim) float32."""
        shift, scale = (self.modulation.float() + temb[:, :, None]).unbind(2)
        return self.head((_layer_norm(x, self.eps).float() * (1 + scale) + shift).to(x.dtype))


@dataclass
class TextCondition:
    """A batch of prompts ready for the DiT: per-layer cross-attention keys/values, each (B, H, S, D)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]


class WanDiT(nn.Module):
    """Wan2.1's DiT, offline (whole sequence, a mask) or streaming block by block on a :class:`RingKVCache`."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)
        self.rope = Rope(cfg.head_dim, cfg.rope_axes)
        self.use_graphs = False  # CUDA graphs for the steady-state pass (see :meth:`cached_pass`)
        self._graphs: dict[tuple, BucketGraphs] = {}

    def keep_fp32(self) -> WanDiT:
        """Time embedding, projection and modulation tables back in float32 (Wan runs them so under bf16)."""
        self.time_embedding.float()
        self.time_projection.float()
        for mod in [blk.modulation for blk in self.blocks] + [self.head.modulation]:
            mod.data = mod.data.float()
        return self

    # -- tokens ----------------------------------------------------------------------------------------
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, F, C, h, w) -> patch vectors (B, F*(h/2)*(w/2), C*1*2*2), frame, row, column order."""
        b, f, c, h, w = latents.shape
        _, ph, pw = self.cfg.patch
        x = latents.reshape(b, f, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, f * (h // ph) * (w // pw), c * ph * pw)

    def unpatchify(self, values: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Inverse of :meth:`patchify`: (B, T, C*2*2) -> (B, F, C, h, w)."""
        cfg, b = self.cfg, values.shape[0]
        _, ph, pw = cfg.patch
        hp, wp = cfg.latent_h // ph, cfg.latent_w // pw
        x = values.reshape(b, num_frames, hp, wp, cfg.in_channels, ph, pw).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, num_frames, cfg.in_channels, hp * ph, wp * pw)

    def positions(self, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        """3D positions (B, F*tokens_per_frame, 3) of frames first_frame (B,) onwards."""
        cfg = self.cfg
        hp, wp = cfg.latent_h // cfg.patch[1], cfg.latent_w // cfg.patch[2]
        frames = first_frame[:, None] + torch.arange(num_frames, device=first_frame.device)[None]  # (B, F)
        t = frames[:, :, None].expand(-1, -1, hp * wp)
        rows = torch.arange(hp, device=first_frame.device).repeat_interleave(wp).expand_as(t)
        cols = torch.arange(wp, device=first_frame.device).repeat(hp).expand_as(t)
        return torch.stack([t, rows, cols], dim=-1).reshape(first_frame.shape[0], -1, 3)

    # -- conditioning ----------------------------------------------------------------------------------
    def condition(self, text: torch.Tensor) -> TextCondition:
        """umT5 features (B, text_len, text_dim) (zeros past the prompt) -> per-layer cross K/V."""
        ctx = self.text_embedding(text)
        return TextCondition([blk.cross_attn.condition_kv(ctx) for blk in self.blocks])

    def time(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Timestep (B,) or (B, T) in [0, 1000] -> (temb (B, 1|T, dim), e (B, 1|T, 6, dim)), float32."""
        if timestep.dim() == 1:
            timestep = timestep[:, None]
        freq = sinusoidal(timestep, self.cfg.freq_dim).to(self.time_embedding[0].weight.dtype)
        temb = self.time_embedding(freq).float()
        e = self.time_projection(temb.to(self.time_projection[1].weight.dtype)).float()
        return temb, e.unflatten(-1, (6, self.cfg.dim))

    # -- the network -----------------------------------------------------------------------------------
    def forward(self, patches: torch.Tensor, timestep: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None, cond: TextCondition, cache: RingKVCache | None = None,
                rows: slice | torch.Tensor | None = None, entries: torch.Tensor | None = None) -> torch.Tensor:
        """Flow velocity (B, T, patch_dim) of patch vectors (B, T, patch_dim) at ``timestep`` (B,) or (B, T).

        Offline: ``mask`` (B, 1, T, T) or None (full attention). Streaming: ``cache`` with the slots'
        ``rows`` and the flat ``entries`` the tokens' K/V go to; ``mask`` (B, 1, T, capacity) or None when
        every cached entry is visible.
        """
        w = self.patch_embedding.weight
        x = F.linear(patches.to(w.dtype), w.flatten(1), self.patch_embedding.bias)
        temb, e = self.time(timestep, x.dtype)
        rope = self.rope.cos_sin(positions, x.dtype)  # once per pass, not per layer
        for i, blk in enumerate(self.blocks):
            x = blk(x, e, rope, mask, cond.kv[i], cache, i, rows, entries)
        out = self.head(x, temb)  # Wan orders output patch values (pt, ph, pw, C): reorder to the input's (C, ...)
        return out.unflatten(-1, (-1, self.cfg.in_channels)).transpose(-1, -2).flatten(-2)

    def forward_video(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                      first_frame: int = 0) -> torch.Tensor:
        """Full attention over a clip, diffusers' layout: latents (B, C, F, h, w) -> velocity (same shape)."""
        b, c, f = latents.shape[:3]
        patches = self.patchify(latents.transpose(1, 2))
        pos = self.positions(torch.full((b,), first_frame, device=latents.device), f)
        out = self(patches, timestep, pos, None, self.condition(text))
        return self.unpatchify(out, f).transpose(1, 2)

    # -- offline reference for the streaming invariant -------------------------------------------------
    def block_labels(self, first_block: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Block index (B, num_blocks * tokens_per_block) of each token."""
        blocks = first_block[:, None] + torch.arange(num_blocks, device=first_block.device)[None]
        return blocks.repeat_interleave(self.cfg.tokens_per_block, dim=1)

    def history_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """Block-causal visibility over a labelled sequence: sink blocks + window, as streaming sees it."""
        cfg = self.cfg
        return offline_mask(labels, cfg.window_blocks + 1, cfg.sink_blocks * cfg.tokens_per_block)

    # -- streaming -------------------------------------------------------------------------------------
    def new_cache(self, num_slots: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                  ) -> RingKVCache:
        """A ring cache per slot: sink block + (window + current) blocks, LongLive's 12 frames."""
        cfg = self.cfg
        return RingKVCache(num_layers=cfg.num_layers, num_slots=num_slots, num_heads=cfg.num_heads,
                           head_dim=cfg.head_dim, window=(cfg.window_blocks + 1) * cfg.tokens_per_block,
                           sink=cfg.sink_blocks * cfg.tokens_per_block, dtype=dtype, device=device)

    def cached_pass(self, cache: RingKVCache, slots: Sequence[int], patches: torch.Tensor, timestep: torch.Tensor,
                    first_block: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """One pass of ``patches`` (B, n blocks of tokens) against the slots' caches; writes their K/V."""
        cfg = self.cfg
        num_blocks = patches.shape[1] // cfg.tokens_per_block
        labels = self.block_labels(first_block, num_blocks)
        index = cache.reserve(slots, labels)
        entries = cache.entry_index(slots, index)
        rows = _rows(slots)
        positions = self.positions(first_block * cfg.block_frames, num_blocks * cfg.block_frames).to(patches.device)
        if not self._all_visible(cache, slots, num_blocks):
            mask = cache.mask(slots, labels, window=cfg.window_blocks + 1)
            return self(patches, timestep, positions, mask, cond, cache, rows, entries)
        if self.use_graphs and patches.is_cuda and isinstance(rows, slice):
            # steady state: no mask, fixed shapes; one graph per (bucket, slot rows, prompt rows). Everything the
            # graph reads lives at fixed addresses (the cache, the generator's per-slot cross-attention rows);
            # per-pass values (patches, time, positions, ring entries) are its inputs.
            key = (rows.start, rows.stop, cond.kv[0][0].data_ptr(), id(cache))
            graphs = self._graphs.get(key)
            if graphs is None:
                graphs = self._graphs[key] = BucketGraphs(
                    lambda x, t, pos, ent: self(x, t, pos, None, cond, cache, rows, ent))
            return graphs(patches, timestep.to(patches.device), positions, entries)
        return self(patches, timestep, positions, None, cond, cache, rows, entries)

    def _all_visible(self, cache: RingKVCache, slots: Sequence[int], num_blocks: int) -> bool:
        """True when every slot's ring is full and one block is written: the mask would be all True."""
        return num_blocks == 1 and all(int(cache.num_written[s]) >= cache.capacity for s in slots)

    @torch.no_grad()
    def generate_block(self, cache: RingKVCache, slots: Sequence[int], block_index: torch.Tensor,
                       cond: TextCondition, noise: torch.Tensor, trace: list | None = None) -> torch.Tensor:
        """Denoise one block per session (LongLive's few-step schedule), then write its clean K/V.

        ``noise`` is (num_steps, B, T, patch_dim): the first entry starts the block, the others re-noise
        the x0 estimate between steps (row b draws only from noise[:, b], so a session's output does not
        depend on its batch). Returns clean patch vectors (B, T, patch_dim). ``trace`` collects
        (sigma, x_t, velocity) of each pass.
        """
        sigmas = self.cfg.sigmas()
        b = noise.shape[1]
        x = noise[0]
        for i, sigma in enumerate(sigmas):
            t = torch.full((b,), sigma * self.cfg.num_train_timesteps, device=x.device)
            v = self.cached_pass(cache, slots, x, t, block_index, cond)
            cache.rewind(slots, x.shape[1], keep_sink=False)
            if trace is not None:
                trace.append((sigma, x, v))
            x0 = (x.double() - sigma * v.double()).to(noise.dtype)  # velocity = noise - x0 (Wan's flow)
            if i + 1 < len(sigmas):
                x = ((1 - sigmas[i + 1]) * x0.double() + sigmas[i + 1] * noise[i + 1].double()).to(noise.dtype)
            else:
                x = x0
        self.cached_pass(cache, slots, x, torch.zeros(b, device=x.device), block_index, cond)
        return x

    @torch.no_grad()
    def recache(self, cache: RingKVCache, slots: Sequence[int], patches: torch.Tensor, first_block: torch.Tensor,
                cond: TextCondition) -> None:
        """KV-recache: rewrite the window's K/V from its clean patches (B, n blocks) under a new prompt.

        The last n blocks (n <= window_blocks; never the sink, LongLive's ``global_sink``) are rewound and
        recomputed in one t = 0 pass, block-causal among themselves and seeing the sink's old K/V.
        """
        num_blocks = patches.shape[1] // self.cfg.tokens_per_block
        if num_blocks == 0:
            return
        if num_blocks > self.cfg.window_blocks:
            raise ValueError("recache covers at most window_blocks blocks")
        cache.rewind(slots, patches.shape[1])
        self.cached_pass(cache, slots, patches, torch.zeros(patches.shape[0], device=patches.device), first_block,
                         cond)


def _rows(slots: Sequence[int]) -> slice | torch.Tensor:
    """The cache rows of a batch: a slice (views, no copies) when the slots are consecutive."""
    s = list(slots)
    if s == list(range(s[0], s[0] + len(s))):
        return slice(s[0], s[0] + len(s))
    return torch.as_tensor(s)


# --- key mapping ---------------------------------------------------------------------------------------

_DIFFUSERS_TOP = {
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "proj_out.": "head.head.",
}
_DIFFUSERS_BLOCK = {
    "attn1.to_q.": "self_attn.q.", "attn1.to_k.": "self_attn.k.", "attn1.to_v.": "self_attn.v.",
    "attn1.to_out.0.": "self_attn.o.", "attn1.norm_q.": "self_attn.norm_q.", "attn1.norm_k.": "self_attn.norm_k.",
    "attn2.to_q.": "cross_attn.q.", "attn2.to_k.": "cross_attn.k.", "attn2.to_v.": "cross_attn.v.",
    "attn2.to_out.0.": "cross_attn.o.", "attn2.norm_q.": "cross_attn.norm_q.", "attn2.norm_k.": "cross_attn.norm_k.",
    "norm2.": "norm3.", "ffn.net.0.proj.": "ffn.0.", "ffn.net.2.": "ffn.2.", "scale_shift_table": "modulation",
}


def diffusers_key(key: str) -> str:
    """A ``WanTransformer3DModel`` state-dict key -> ours (Wan's original naming)."""
    if key == "scale_shift_table":
        return "head.modulation"
    for old, new in _DIFFUSERS_TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith("blocks."):
        _, index, rest = key.split(".", 2)
        for old, new in _DIFFUSERS_BLOCK.items():
            if rest.startswith(old):
                return f"blocks.{index}.{new}{rest[len(old):]}"
    return key


def longlive_key(key: str) -> str:
    """A LongLive generator key (``model.`` + Wan's naming) -> ours."""
    return key[len("model."):] if key.startswith("model.") else key
