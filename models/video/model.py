"""The video family's model: a block-causal DiT with 3D RoPE and text cross-attention (after LongLive / Wan2.1).

Read top to bottom: config -> transformer block -> model (offline pass for training, streaming pass against
the shared ring KV cache) -> block generation (few re-noise steps, then a t = 0 pass that writes the block's
keys/values) -> KV-recache on a prompt switch.

Tokens: a latent frame (C, h, w) is cut into (h/p)(w/p) patches; a *block* is ``block_frames`` latent frames.
Every token carries 3D positions (frame, row, column) for rotary attention and its block index as the cache
label, so the shared visibility rule (:func:`models.cache.visible`) makes attention block-causal with a
frame sink (the first ``sink_blocks`` blocks, kept forever) and a window of ``window_blocks`` past blocks.
Streaming block by block equals one offline pass with :meth:`VideoDiT.teacher_forcing_mask`.

Text: MiniLM token features (or umT5's for the paper shape) are projected once per prompt into per-layer
cross-attention keys/values (:meth:`VideoDiT.condition`). The default config also adds the pooled prompt
vector to the timestep embedding (adaLN), which a model this small needs to follow prompts reliably.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.cache import RingKVCache, visible
from models.flow import interpolate, time_grid
from models.layers import CachedSelfAttention, CrossAttention, Rope, SwiGLU, TimeEmbedding, modulate


@dataclass(frozen=True)
class VideoConfig:
    """Shape of a video model and its streaming schedule."""

    width: int = 64  # pixels per frame, horizontally (the autoencoder's input)
    height: int = 64  # pixels per frame, vertically
    fps: float = 16.0  # video frames per second
    time_factor: int = 2  # video frames per latent frame (Wan VAE: 4)
    spatial_factor: int = 8  # pixels per latent cell along each side (Wan VAE: 8)
    latent_channels: int = 8  # channels of a latent frame (Wan VAE: 16)
    patch: int = 2  # latent cells per token along each side (Wan: 2)
    dim: int = 128  # transformer width
    num_layers: int = 6  # transformer blocks
    num_heads: int = 4  # attention heads (head_dim = dim / num_heads)
    ffn_hidden: int = 384  # SwiGLU hidden width
    text_dim: int = 384  # prompt-encoder feature width (MiniLM 384; umT5 4096)
    text_tokens: int = 32  # prompt tokens kept (longer prompts are truncated)
    pooled_text: bool = True  # add the pooled prompt to the adaLN conditioning (default: yes; Wan: no)
    block_frames: int = 2  # latent frames per block (LongLive: 3)
    sink_blocks: int = 1  # first blocks kept forever as the frame sink (LongLive: 1 block = 3 frames)
    window_blocks: int = 2  # past blocks besides the sink that a block attends to (LongLive: 2)
    num_steps: int = 4  # denoising steps per block, before the t = 0 cache-write pass
    first_block_steps: int = 8  # steps for a block with no history (text only: more steps keep the object)
    shift: float = 1.0  # time-grid shift (LongLive: 5 with a distilled model; ours is not distilled)
    display_scale: int = 2  # the served video is upsampled by this factor (bilinear)

    @property
    def latent_h(self) -> int:
        """Latent cells per column."""
        return self.height // self.spatial_factor

    @property
    def latent_w(self) -> int:
        """Latent cells per row."""
        return self.width // self.spatial_factor

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame."""
        return (self.latent_h // self.patch) * (self.latent_w // self.patch)

    @property
    def tokens_per_block(self) -> int:
        """Tokens of one block."""
        return self.block_frames * self.tokens_per_frame

    @property
    def video_frames_per_block(self) -> int:
        """Video frames one block decodes to."""
        return self.block_frames * self.time_factor

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.num_heads

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Head-dim split (time, row, column), as Wan: d - 4*(d//6), 2*(d//6), 2*(d//6)."""
        d = self.head_dim
        return (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))

    def describe(self) -> dict[str, Any]:
        """Fields and derived sizes, JSON-able."""
        return {**asdict(self), "tokens_per_block": self.tokens_per_block, "rope_axes": list(self.rope_axes)}

    @classmethod
    def default(cls) -> VideoConfig:
        """The small model trained on CPU here (64x64 at 16 fps, served at 128x128)."""
        return cls()

    @classmethod
    def paper(cls) -> VideoConfig:
        """Wan2.1-T2V-1.3B / LongLive shape at 832x480 (SwiGLU 5976 has the FLOPs of Wan's GELU 8960)."""
        return cls(width=832, height=480, time_factor=4, latent_channels=16, patch=2, dim=1536, num_layers=30,
                   num_heads=12, ffn_hidden=5976, text_dim=4096, text_tokens=512, pooled_text=False,
                   block_frames=3, sink_blocks=1, window_blocks=2, num_steps=4, first_block_steps=4, shift=5.0,
                   display_scale=1)

    @classmethod
    def tiny(cls, **overrides: Any) -> VideoConfig:
        """A seconds-fast shape for tests."""
        base = cls(width=32, height=32, latent_channels=4, patch=1, dim=32, num_layers=2, num_heads=2, ffn_hidden=64,
                   text_dim=16, text_tokens=4, num_steps=2, first_block_steps=3, display_scale=1)
        return replace(base, **overrides)


class DiTBlock(nn.Module):
    """adaLN-modulated self-attention (3D RoPE, cached), cross-attention to text, and a SwiGLU MLP."""

    def __init__(self, cfg: VideoConfig, rope: Rope) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = CachedSelfAttention(cfg.dim, cfg.num_heads, rope=rope)
        self.norm_cross = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.cross = CrossAttention(cfg.dim, cfg.dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(cfg.dim, cfg.ffn_hidden)
        self.mod = nn.Parameter(torch.zeros(6, cfg.dim))  # per-layer offsets of the shared modulation (Wan)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cross_kv: tuple[torch.Tensor, torch.Tensor], cross_mask: torch.Tensor,
                cache: RingKVCache | None = None, layer: int = 0, slots: Sequence[int] | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """X (B, T, C); mod (B, T, 6, C) from the timestep/prompt embedding."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.mod).unbind(2)  # each (B, T, C)
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.attn(h, positions, mask, cache=cache, layer=layer, slots=slots, index=index)
        x = x + self.cross(self.norm_cross(x), cross_kv, cross_mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


@dataclass
class Condition:
    """A batch of prompts, ready for the DiT: per-layer cross-attention K/V and pooled vectors.

    Each row holds ``P`` prompts (P = 1 when streaming; several when a training clip switches prompts);
    tokens pick their prompt by index, so one pass can mix frames under different prompts.
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, each (B, H, P*S, D)
    key_prompt: torch.Tensor  # (B, P*S) prompt index of each text token, -1 for padding
    pooled: torch.Tensor  # (B, P, C) pooled prompt embedding (zeros when the config does not use it)

    def cross_mask(self, token_prompt: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, P*S): a video token sees the text tokens of its own prompt."""
        return self.key_prompt[:, None, None, :] == token_prompt[:, None, :, None]


class VideoDiT(nn.Module):
    """The block-causal video DiT."""

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        in_dim = cfg.latent_channels * cfg.patch * cfg.patch
        self.patch_in = nn.Linear(in_dim, cfg.dim)
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                       nn.Linear(cfg.dim, cfg.dim))
        self.pool_proj = nn.Linear(cfg.text_dim, cfg.dim) if cfg.pooled_text else None
        self.time_embed = TimeEmbedding(cfg.dim)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        rope = Rope(cfg.head_dim, cfg.rope_axes)
        self.blocks = nn.ModuleList(DiTBlock(cfg, rope) for _ in range(cfg.num_layers))
        self.head_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.head_mod = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.head = nn.Linear(cfg.dim, in_dim)
        # zero-initialised modulation and output: every block starts as the identity (DiT)
        for lin in (self.time_proj[1], self.head_mod, self.head):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # -- tokens ----------------------------------------------------------------------------------------
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, F, C, h, w) -> tokens (B, F*(h/p)*(w/p), C*p*p), frame-major then row, column."""
        b, f, c, h, w = latents.shape
        p = self.cfg.patch
        x = latents.reshape(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)  # (B, F, h/p, w/p, C, p, p)
        return x.reshape(b, f * (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Inverse of :meth:`patchify`."""
        cfg, b = self.cfg, tokens.shape[0]
        p, hp, wp = cfg.patch, cfg.latent_h // cfg.patch, cfg.latent_w // cfg.patch
        x = tokens.reshape(b, num_frames, hp, wp, cfg.latent_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, num_frames, cfg.latent_channels, hp * p, wp * p)  # (B, F, C, h, w)

    def positions(self, frame_index: torch.Tensor) -> torch.Tensor:
        """3D positions (B, F*tokens_per_frame, 3) of the tokens of latent frames ``frame_index`` (B, F)."""
        cfg = self.cfg
        hp, wp = cfg.latent_h // cfg.patch, cfg.latent_w // cfg.patch
        rows = torch.arange(hp).repeat_interleave(wp)  # (hp*wp,)
        cols = torch.arange(wp).repeat(hp)
        b, f = frame_index.shape
        t = frame_index[:, :, None].expand(b, f, hp * wp)
        grid = torch.stack([t, rows.expand(b, f, -1), cols.expand(b, f, -1)], dim=-1)  # (B, F, hp*wp, 3)
        return grid.reshape(b, f * hp * wp, 3)

    def token_repeat(self, per_frame: torch.Tensor) -> torch.Tensor:
        """Spread a per-latent-frame value (B, F, ...) over the frame's tokens -> (B, F*tokens_per_frame, ...)."""
        return per_frame.repeat_interleave(self.cfg.tokens_per_frame, dim=1)

    # -- conditioning ----------------------------------------------------------------------------------
    def condition(self, text: torch.Tensor, text_mask: torch.Tensor) -> Condition:
        """Prompt features (B, P, S, text_dim) with validity (B, P, S) -> :class:`Condition`."""
        b, p, s, _ = text.shape
        ctx = self.text_proj(text).reshape(b, p * s, -1)  # (B, P*S, C)
        kv = [blk.cross.condition_kv(ctx) for blk in self.blocks]
        prompt_ids = torch.arange(p, device=text.device).repeat_interleave(s)[None].expand(b, -1)
        key_prompt = torch.where(text_mask.reshape(b, p * s), prompt_ids, -1)
        if self.pool_proj is not None:
            m = text_mask[..., None].to(text.dtype)
            pooled = self.pool_proj(F.normalize((text * m).sum(2) / m.sum(2).clamp(min=1.0), dim=-1))
        else:
            pooled = text.new_zeros(b, p, self.cfg.dim)
        return Condition(kv, key_prompt, pooled)

    # -- the network -----------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, t: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cond: Condition, token_prompt: torch.Tensor, cache: RingKVCache | None = None,
                slots: Sequence[int] | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity for tokens (B, T, in) at per-token times t (B, T); with ``cache``, streams (see layers)."""
        x = self.patch_in(tokens)
        emb = self.time_embed(t) + torch.gather(  # (B, T, C): time + the token's prompt
            cond.pooled, 1, token_prompt[..., None].expand(-1, -1, cond.pooled.shape[-1]))
        mod = self.time_proj(emb).unflatten(-1, (6, self.cfg.dim))  # (B, T, 6, C)
        cross_mask = cond.cross_mask(token_prompt)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mod, positions, mask, cond.kv[i], cross_mask, cache, i, slots, index)
        shift, scale = self.head_mod(F.silu(emb)).chunk(2, dim=-1)
        return self.head(modulate(self.head_norm(x), shift, scale))

    # -- offline (training) ----------------------------------------------------------------------------
    def teacher_forcing_mask(self, block_ids: torch.Tensor) -> torch.Tensor:
        """Visibility (B, 1, 2T, 2T) over [clean tokens | noisy tokens] with token block labels (B, T).

        Clean tokens see clean tokens block-causally (sink + window); a noisy block sees the clean blocks
        *before* it (sink + window) and itself: exactly what streaming sees while denoising that block.
        """
        cfg = self.cfg
        window = cfg.window_blocks + 1
        in_sink = block_ids < cfg.sink_blocks
        clean_clean = visible(block_ids, block_ids, in_sink, window)
        noisy_clean = visible(block_ids - 1, block_ids, in_sink, window - 1)
        noisy_noisy = (block_ids[:, None, :, None] == block_ids[:, None, None, :])
        none = torch.zeros_like(clean_clean)
        return torch.cat([torch.cat([clean_clean, none], 3), torch.cat([noisy_clean, noisy_noisy], 3)], 2)

    # -- streaming -------------------------------------------------------------------------------------
    def new_cache(self, num_slots: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                  ) -> RingKVCache:
        """A ring cache sized for this config: sink blocks + (window + current) blocks per slot."""
        cfg = self.cfg
        return RingKVCache(num_layers=cfg.num_layers, num_slots=num_slots, num_heads=cfg.num_heads,
                           head_dim=cfg.head_dim, window=(cfg.window_blocks + 1) * cfg.tokens_per_block,
                           sink=cfg.sink_blocks * cfg.tokens_per_block, dtype=dtype, device=device)

    def block_inputs(self, block_index: torch.Tensor, num_blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, T, 3) and labels (B, T) of ``num_blocks`` blocks starting at ``block_index`` (B,)."""
        cfg = self.cfg
        frames = block_index[:, None] * cfg.block_frames + torch.arange(num_blocks * cfg.block_frames)[None]
        labels = self.token_repeat(frames // cfg.block_frames)
        return self.positions(frames), labels

    def _cached_pass(self, cache: RingKVCache, slots: Sequence[int], tokens: torch.Tensor, t: torch.Tensor,
                     positions: torch.Tensor, labels: torch.Tensor, cond: Condition) -> torch.Tensor:
        positions, labels = positions.to(tokens.device), labels.to(tokens.device)
        index = cache.reserve(slots, labels)
        mask = cache.mask(slots, labels, window=self.cfg.window_blocks + 1)
        prompt = torch.zeros_like(labels)
        t = t.to(tokens.device, tokens.dtype).expand(labels.shape)
        return self(tokens, t, positions, mask, cond, prompt, cache, slots, index)

    @torch.no_grad()
    def generate_block(self, cache: RingKVCache, slots: Sequence[int], block_index: torch.Tensor,
                       cond: Condition, noise: torch.Tensor, num_steps: int, trace: list | None = None
                       ) -> torch.Tensor:
        """Denoise one block for a batch of sessions and write its clean K/V; returns latents (B, F, C, h, w).

        Every denoising pass writes the block's K/V, attends over cache + block, then rewinds those entries
        (scratch); the final t = 0 pass on the clean block writes them for good (Self-Forcing / LongLive).
        ``noise`` is (B, T, in) tokens; fresh re-noising draws from it too, so results do not depend on the
        batch (row b uses noise[b] only): ``noise`` is (num_steps, B, T, in). ``trace`` collects
        (t, x_t, velocity) of every denoising pass (tests compare them with the offline pass).
        """
        positions, labels = self.block_inputs(block_index)
        times = time_grid(num_steps, self.cfg.shift, noise.device)[:-1]
        x = noise[0]
        for i, t in enumerate(times):
            v = self._cached_pass(cache, slots, x, t, positions, labels, cond)
            cache.rewind(slots, labels.shape[1], keep_sink=False)
            if trace is not None:
                trace.append((t, x, v))
            x0 = (x - t * v).to(noise.dtype)
            if i + 1 < len(times):
                x = interpolate(x0, noise[i + 1], times[i + 1].expand(x.shape[0])).to(noise.dtype)
            else:
                x = x0
        self._cached_pass(cache, slots, x, torch.zeros(()), positions, labels, cond)
        return self.unpatchify(x, self.cfg.block_frames)

    @torch.no_grad()
    def recache(self, cache: RingKVCache, slots: Sequence[int], latents: torch.Tensor, first_block: torch.Tensor,
                cond: Condition) -> None:
        """KV-recache: rewrite the window's K/V from its clean latents (B, n*F, C, h, w) under a new prompt.

        The last n blocks (n <= window_blocks, never the sink) are rewound and recomputed in one t = 0 pass,
        block-causal among themselves and seeing the sink (which keeps its old K/V, LongLive's global sink).
        """
        num_blocks = latents.shape[1] // self.cfg.block_frames
        if num_blocks == 0:
            return
        if num_blocks > self.cfg.window_blocks:
            raise ValueError("recache covers at most window_blocks blocks")
        cache.rewind(slots, num_blocks * self.cfg.tokens_per_block)
        positions, labels = self.block_inputs(first_block, num_blocks)
        self._cached_pass(cache, slots, self.patchify(latents), torch.zeros(()), positions, labels, cond)
