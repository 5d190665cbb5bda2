"""The `video` generator on LongLive's weights: Wan2.1 DiT + streaming causal VAE + umT5, one block per step.

Sessions, prompt events, coalescing and the three switch strategies (recache / clear / keep) are the shipped
video generator's (:class:`models.video.generator.VideoGenerator`); this class swaps the networks:

- a step denoises one block (3 latent frames) per session with LongLive's 4-step schedule against the
  session's slot of one shared :class:`~models.cache.RingKVCache` (sink block + 2 past blocks + the block),
  then a t = 0 pass writes the block's K/V;
- the VAE decodes the block from the session's feature cache: 12 video frames (750 ms at 16 fps). The stream's
  first block makes 9 (Wan's first latent frame is one video frame), so its first frame is held for 3 more;
- a prompt is encoded once (umT5, LRU) when a session starts or switches, and projected into per-slot
  cross-attention K/V rows, so a batch gathers rows;
- ``recache`` recomputes the window's K/V from its clean latents under the new prompt (the sink keeps its
  own: LongLive's global sink).

Serving it needs a GPU (``PUBLISHED_MODEL.needs_gpu``); the class itself runs anywhere (tests build tiny
random models on the CPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from models.base import Pacing, StepInput, StepOutput, StreamSpec, VideoFormat
from models.video.generator import SWITCH_STRATEGIES, VideoGenerator, VideoState
from models.video.wan.dit import TextCondition, WanConfig, WanDiT
from models.video.wan.text import WanTextEncoder
from models.video.wan.vae import DecoderState, StreamingWanDecoder

FPS = 16.0  # Wan2.1's frame rate
TIME_FACTOR = 4  # video frames per latent frame (after the first)
SPATIAL_FACTOR = 8  # pixels per latent cell


class WanVideoGenerator(VideoGenerator):
    """Long interactive text-to-video on Wan2.1-T2V-1.3B as LongLive fine-tuned it."""

    name = "video"

    def __init__(self, *, dit: WanDiT, decoder: StreamingWanDecoder, text_encoder: WanTextEncoder,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, switch: str = "recache",
                 max_sessions: int = 2, default_prompt: str | None = None) -> None:
        if switch not in SWITCH_STRATEGIES:
            raise ValueError(f"switch must be one of {SWITCH_STRATEGIES}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.wan_cfg: WanConfig = dit.cfg
        self.dit = dit.to(self.device, dtype).keep_fp32().eval()
        self.vae = decoder.to(self.device, dtype).eval()
        self.text_encoder = text_encoder
        self.default_switch = switch
        self.max_batch_size = max_sessions
        self.default_prompt = default_prompt
        self.cache = self.dit.new_cache(max_sessions, dtype, self.device)
        cfg = self.wan_cfg
        shape = (cfg.num_layers, max_sessions, cfg.num_heads, cfg.text_len, cfg.head_dim)
        self.cross_k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.cross_v = torch.zeros_like(self.cross_k)
        frames = cfg.block_frames * TIME_FACTOR
        self.spec = StreamSpec(
            chunk_ms=1000.0 * frames / FPS,
            pacing=Pacing.CLOCK,
            output_video=VideoFormat(cfg.latent_w * SPATIAL_FACTOR, cfg.latent_h * SPATIAL_FACTOR, FPS),
            latency_allowance_ms=2000.0 * frames / FPS,  # up to two blocks ahead of playout, as the shipped model
            event_types=frozenset({"prompt"}),
        )

    def compile(self) -> None:
        """torch.compile the static-shape parts of every DiT block (FFN, cross-attention): optional, GPU."""
        for blk in self.dit.blocks:
            blk.ffn = torch.compile(blk.ffn, dynamic=False)
            blk.cross_attn = torch.compile(blk.cross_attn, dynamic=False)

    # -- sessions --------------------------------------------------------------------------------------
    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """As the shipped model; the default prompt is this release's."""
        if "prompt" not in params and self.default_prompt:
            params = {**params, "prompt": self.default_prompt}
        return super().validate_params(params)

    def open_session(self, params: Mapping[str, Any]) -> VideoState:
        """Take a cache slot, encode the first prompt, start a decoder stream."""
        state = super().open_session(params)
        state.decoder = DecoderState()  # type: ignore[attr-defined]
        return state

    def _set_condition(self, state: VideoState, text: str) -> None:
        """Encode a prompt (umT5, cached per text) into the session's cross-attention rows."""
        features = self.text_encoder.encode(text).to(self.device, self.dtype)[None]
        cond = self.dit.condition(features)
        for layer, (k, v) in enumerate(cond.kv):
            self.cross_k[layer, state.slot] = k[0]
            self.cross_v[layer, state.slot] = v[0]
        state.prompt = text

    def _text(self, slots: Sequence[int]) -> TextCondition:
        s = list(slots)
        if s == list(range(s[0], s[0] + len(s))):  # consecutive slots: views, no copies
            rows: slice | torch.Tensor = slice(s[0], s[0] + len(s))
        else:
            rows = torch.as_tensor(s, device=self.device)
        return TextCondition([(self.cross_k[i, rows], self.cross_v[i, rows]) for i in range(self.wan_cfg.num_layers)])

    # -- switching (the base class's apply_switch, with Wan's recache) ---------------------------------
    @property
    def sink_blocks(self) -> int:
        """Blocks kept in the cache's sink (never recomputed by a switch)."""
        return self.wan_cfg.sink_blocks

    @property
    def frames_per_block(self) -> int:
        """Video frames one block decodes to."""
        return self.wan_cfg.block_frames * TIME_FACTOR

    def _recache(self, state: VideoState, num_window: int) -> None:
        """Recompute the window's K/V from the kept clean patches under the new prompt."""
        patches = torch.cat(state.history[-num_window:], dim=0)[None].to(self.device, self.dtype)
        first = torch.tensor([state.num_blocks - num_window])
        self.dit.recache(self.cache, [state.slot], patches, first, self._text([state.slot]))

    # -- stepping --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, states: Sequence[VideoState], inputs: Sequence[StepInput], padded_batch_size: int
             ) -> list[StepOutput]:
        """Apply pending switches, generate one block per session, decode it, emit 12 frames each."""
        notices = self.apply_pending_switches(states)
        patches = self.generate(states)
        frames = self.decode(states, patches)
        return [StepOutput(video=frames[i], notices=notices[i]) for i in range(len(states))]

    def generate(self, states: Sequence[VideoState], num_steps: int | None = None) -> torch.Tensor:
        """One block for a batch of sessions; returns clean patch vectors (B, T, patch_dim)."""
        cfg = self.wan_cfg
        steps = len(cfg.denoising_steps)
        # each session draws its own noise, so its output does not depend on who shares the batch
        noise = torch.stack([torch.randn(steps, cfg.tokens_per_block, cfg.patch_dim, generator=s.generator)
                             for s in states], 1).to(self.device, self.dtype)
        slots = [s.slot for s in states]
        block_index = torch.tensor([s.num_blocks for s in states])
        out = self.dit.generate_block(self.cache, slots, block_index, self._text(slots), noise)
        for j, s in enumerate(states):
            s.history = (s.history + [out[j]])[-cfg.window_blocks:]
            s.num_blocks += 1
            s.fresh = False
        return out

    def decode(self, states: Sequence[VideoState], patches: torch.Tensor) -> np.ndarray:
        """Streaming VAE decode of one block per session -> uint8 frames (B, 12, H, W, 3)."""
        cfg = self.wan_cfg
        latents = self.dit.unpatchify(patches, cfg.block_frames).transpose(1, 2)  # (B, C, F, h, w)
        out: list[torch.Tensor | None] = [None] * len(states)
        groups: dict[bool, list[int]] = {}
        for i, s in enumerate(states):  # streams that have started decode together; new ones together
            groups.setdefault(s.decoder.started, []).append(i)  # type: ignore[attr-defined]
        for rows in groups.values():
            state = DecoderState.stack([states[i].decoder for i in rows])  # type: ignore[attr-defined]
            video = self.vae.decode(latents[rows], state)  # (b, 3, frames, H, W)
            for j, part in zip(rows, state.split(len(rows)), strict=True):
                states[j].decoder = part  # type: ignore[attr-defined]
                out[j] = video[rows.index(j)]
        frames_per_block = cfg.block_frames * TIME_FACTOR
        result = []
        for video in out:
            assert video is not None
            if video.shape[1] < frames_per_block:  # the stream's first block: hold its first frame
                held = video[:, :1].expand(-1, frames_per_block - video.shape[1], -1, -1)
                video = torch.cat([held, video], dim=1)
            rgb = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, N, H, W)
            result.append(rgb.permute(1, 2, 3, 0))
        return torch.stack(result).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """Summary for /healthz."""
        return {**super(VideoGenerator, self).describe(), "config": self.wan_cfg.describe(),
                "switch": self.default_switch, "release": "longlive"}
