"""Model `video`: the served generator (sessions, prompt events, batched block steps, streaming decode).

One step of a session = one block: ``block_frames`` latent frames denoised against the session's slot of the
shared ring KV cache, then decoded at once by the causal autoencoder, so every step emits
``video_frames_per_block`` frames (250 ms at 16 fps for the default config).

Prompt switches (design note): ``handle_event`` only records the newest text (coalescing a flood: the
latest prompt wins, at most one switch is applied per block) and never runs a model; the switch is applied
at the start of the session's next step: encode the prompt (LRU-cached), rewrite the session's
cross-attention rows, then the strategy:
- ``recache`` (default): rewrite the window's self-attention K/V from its clean latents under the new
  prompt (the sink keeps its K/V), as LongLive does;
- ``clear``: drop the whole cache: the next block starts a fresh stream (text only, more steps);
- ``keep``: keep the cache; only cross-attention changes (follows the new prompt slowly or not at all).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.base import ControlEvent, Generator, Pacing, StepInput, StepOutput, StreamSpec, VideoFormat
from models.errors import ParamError
from models.params import seed_param, unknown_params
from models.video.autoencoder import LatentAutoencoder, to_uint8
from models.video.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, random_models
from models.video.model import Condition, VideoConfig, VideoDiT
from models.video.scenes import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIZES, Scene
from models.video.text import HashTextEncoder, PromptEncoder

SWITCH_STRATEGIES = ("recache", "clear", "keep")
DEFAULT_PROMPT = "a large red circle moving right on a black background"
MAX_PROMPT_CHARS = 16_384  # longer texts are refused; anything up to this is truncated to the token budget


@dataclass
class VideoState:
    """One stream: its cache slot, position, prompt, pending switch and decoder state."""

    slot: int
    seed: int
    strategy: str
    prompt: str
    generator: torch.Generator
    num_blocks: int = 0  # blocks generated so far (the next block's index)
    history: list[torch.Tensor] = field(default_factory=list)  # clean latents (F, C, h, w) of recent blocks
    prev_latent: torch.Tensor | None = None  # last latent frame, the causal decoder's state
    fresh: bool = True  # no history in the cache (start, or after `clear`): use first_block_steps
    pending_prompt: str | None = None
    pending_strategy: str | None = None
    num_coalesced: int = 0  # prompt events superseded before they were applied
    num_switches: int = 0


class VideoGenerator(Generator):
    """Long interactive text-to-video after LongLive (see ``docs/models/video.md``)."""

    name = "video"

    def __init__(
        self,
        *,
        device: str = "cpu",
        config: str = "default",
        checkpoint: str | None = None,
        switch: str = "recache",
        max_sessions: int = 8,
        dtype: str = "float32",
        threads: int = 0,
        seed: int = 0,
    ) -> None:
        if switch not in SWITCH_STRATEGIES:
            raise ValueError(f"switch must be one of {SWITCH_STRATEGIES}")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        if config == "default" or checkpoint:
            cfg, model, ae = load_checkpoint(checkpoint or DEFAULT_CHECKPOINT)
            self.text_encoder: Any = PromptEncoder(max_tokens=cfg.text_tokens)
        else:
            cfg = {"paper": VideoConfig.paper, "tiny": VideoConfig.tiny}[config]()
            model, ae = random_models(cfg, seed)
            self.text_encoder = HashTextEncoder(cfg.text_dim, cfg.text_tokens)
        self.cfg: VideoConfig = cfg
        self.model: VideoDiT = model.to(self.device, self.dtype)
        self.ae: LatentAutoencoder = ae.to(self.device, self.dtype)
        self.default_switch = switch
        self.max_batch_size = max_sessions
        self.cache = model.new_cache(max_sessions, self.dtype, self.device)
        # Per-slot prompt state, so a batch gathers rows instead of concatenating per-session tensors.
        h, s, d = cfg.num_heads, cfg.text_tokens, cfg.head_dim
        self.cross_k = torch.zeros(cfg.num_layers, max_sessions, h, s, d, dtype=self.dtype, device=self.device)
        self.cross_v = torch.zeros_like(self.cross_k)
        self.key_prompt = torch.full((max_sessions, s), -1, dtype=torch.long, device=self.device)
        self.pooled = torch.zeros(max_sessions, 1, cfg.dim, dtype=self.dtype, device=self.device)
        self.spec = StreamSpec(
            chunk_ms=1000.0 * cfg.video_frames_per_block / cfg.fps,
            pacing=Pacing.CLOCK,
            output_video=VideoFormat(cfg.width * cfg.display_scale, cfg.height * cfg.display_scale, cfg.fps),
            # produce up to two blocks ahead of playout: a block's cost varies (first blocks take more steps,
            # a switch adds a recache pass) and a shared CPU is noisy; a switch shows within ~3 blocks
            latency_allowance_ms=2000.0 * cfg.video_frames_per_block / cfg.fps,
            event_types=frozenset({"prompt"}),
        )

    # -- sessions --------------------------------------------------------------------------------------
    def validate_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``prompt`` (str), ``switch`` (recache | clear | keep), ``seed`` (int)."""
        unknown_params("video", params, {"prompt", "switch", "seed"})
        out = {"prompt": self._check_prompt(params.get("prompt", DEFAULT_PROMPT)),
               "switch": params.get("switch", self.default_switch), "seed": seed_param(params, default=0)}
        if out["switch"] not in SWITCH_STRATEGIES:
            raise ParamError(f"'switch' must be one of {list(SWITCH_STRATEGIES)}")
        return out

    def open_session(self, params: Mapping[str, Any]) -> VideoState:
        """Take a cache slot and encode the first prompt."""
        p = self.validate_params(params)
        slot = self.cache.allocate()
        state = VideoState(slot=slot, seed=p["seed"], strategy=p["switch"], prompt=p["prompt"],
                             generator=torch.Generator().manual_seed(p["seed"]))
        self._set_condition(state, p["prompt"])
        return state

    def close_session(self, state: VideoState) -> None:
        """Give the cache slot back."""
        try:
            self.cache.free(state.slot)
        except ValueError:
            pass

    def handle_event(self, state: VideoState, event: ControlEvent) -> list[dict[str, Any]]:
        """`prompt` {text, switch?}: queue a switch for the next block (the newest prompt wins)."""
        if event.type != "prompt":
            return super().handle_event(state, event)
        text = self._check_prompt(event.payload.get("text"))
        strategy = event.payload.get("switch", state.strategy)
        if strategy not in SWITCH_STRATEGIES:
            raise ParamError(f"'switch' must be one of {list(SWITCH_STRATEGIES)}")
        coalesced = state.pending_prompt is not None
        state.num_coalesced += int(coalesced)
        state.pending_prompt, state.pending_strategy = text, strategy
        if coalesced:  # one notice per applied switch, not per event: a flood must not flood the client
            return []
        return [{"type": "prompt_queued", "block": state.num_blocks, "switch": strategy}]

    def _check_prompt(self, text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ParamError("'prompt' needs a non-empty string 'text'")
        if len(text) > MAX_PROMPT_CHARS:
            raise ParamError(f"prompt of {len(text)} characters exceeds {MAX_PROMPT_CHARS}")
        return " ".join(text.split())

    def _set_condition(self, state: VideoState, text: str) -> None:
        """Encode a prompt (cached per text) into the session's cross-attention rows."""
        tokens, mask = self.text_encoder.encode(text)
        tokens = tokens.to(self.device, self.dtype)[None, None]  # (1, 1, S, text_dim)
        cond = self.model.condition(tokens, mask.to(self.device)[None, None])
        for layer, (k, v) in enumerate(cond.kv):
            self.cross_k[layer, state.slot] = k[0]
            self.cross_v[layer, state.slot] = v[0]
        self.key_prompt[state.slot] = cond.key_prompt[0]
        self.pooled[state.slot] = cond.pooled[0]
        state.prompt = text

    def _condition(self, slots: Sequence[int]) -> Condition:
        idx = torch.as_tensor(slots, device=self.device)
        kv = [(self.cross_k[i, idx], self.cross_v[i, idx]) for i in range(self.cfg.num_layers)]
        return Condition(kv, self.key_prompt[idx], self.pooled[idx])

    # -- switching -------------------------------------------------------------------------------------
    @torch.no_grad()
    def apply_switch(self, state: VideoState, text: str, strategy: str) -> dict[str, Any]:
        """Switch a session's prompt now (see the module docstring); returns a notice with timings."""
        t0 = time.perf_counter()
        self._set_condition(state, text)
        num_recached = 0
        # the window's blocks that are not in the sink (the sink keeps its K/V: LongLive's global sink)
        num_window = min(len(state.history), state.num_blocks - self.sink_blocks)
        if strategy == "recache" and not state.fresh and num_window > 0:
            self._recache(state, num_window)
            num_recached = num_window
        elif strategy == "clear":
            self.cache.clear([state.slot], keep_sink=False)
            state.history.clear()
            state.fresh = True
        state.num_switches += 1
        if self.device.type == "cuda":  # the notice's switch_ms is the switch's, not the queue's
            torch.cuda.synchronize(self.device)
        return {"type": "prompt_applied", "text": text, "switch": strategy, "block": state.num_blocks,
                "frame": state.num_blocks * self.frames_per_block, "recached_blocks": num_recached,
                "coalesced": state.num_coalesced, "switch_ms": round(1000 * (time.perf_counter() - t0), 2)}

    @property
    def sink_blocks(self) -> int:
        """Blocks kept in the cache's sink (never recomputed by a switch)."""
        return self.cfg.sink_blocks

    @property
    def frames_per_block(self) -> int:
        """Video frames one block decodes to."""
        return self.cfg.video_frames_per_block

    def _recache(self, state: VideoState, num_window: int) -> None:
        """Recompute the last ``num_window`` blocks' K/V under the session's new condition."""
        latents = torch.cat(state.history[-num_window:])[None].to(self.device, self.dtype)  # (1, n*F, C, h, w)
        first = torch.tensor([state.num_blocks - num_window])
        self.model.recache(self.cache, [state.slot], latents, first, self._condition([state.slot]))

    def apply_pending_switches(self, states: Sequence[VideoState]) -> list[list[dict[str, Any]]]:
        """Each session's switch that waited for this step, applied; the notices, one list per session."""
        notices: list[list[dict[str, Any]]] = [[] for _ in states]
        for i, state in enumerate(states):
            if state.pending_prompt is not None:
                notices[i].append(self.apply_switch(state, state.pending_prompt, state.pending_strategy or "recache"))
                state.pending_prompt, state.pending_strategy, state.num_coalesced = None, None, 0
        return notices

    # -- stepping --------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, states: Sequence[VideoState], inputs: Sequence[StepInput], padded_batch_size: int
             ) -> list[StepOutput]:
        """Apply pending switches, generate one block per session (grouped by step count), decode, emit."""
        notices = self.apply_pending_switches(states)
        latents: list[torch.Tensor | None] = [None] * len(states)
        groups: dict[int, list[int]] = {}
        for i, state in enumerate(states):
            groups.setdefault(self.cfg.first_block_steps if state.fresh else self.cfg.num_steps, []).append(i)
        for num_steps, rows in groups.items():
            out = self.generate([states[i] for i in rows], num_steps)
            for j, i in enumerate(rows):
                latents[i] = out[j]
        frames = self.decode(states, torch.stack(latents))  # type: ignore[arg-type]
        return [StepOutput(video=frames[i], notices=notices[i]) for i in range(len(states))]

    def generate(self, states: Sequence[VideoState], num_steps: int) -> torch.Tensor:
        """One block for sessions that share a step count; returns latents (B, F, C, h, w)."""
        cfg = self.cfg
        tokens, in_dim = cfg.tokens_per_block, cfg.latent_channels * cfg.patch**2
        # each session draws its own noise, so its output does not depend on who shares the batch
        noise = torch.stack([torch.randn(num_steps, tokens, in_dim, generator=s.generator) for s in states], 1)
        slots = [s.slot for s in states]
        block_index = torch.tensor([s.num_blocks for s in states])
        out = self.model.generate_block(self.cache, slots, block_index, self._condition(slots),
                                        noise.to(self.device, self.dtype), num_steps)
        for j, s in enumerate(states):
            s.history = (s.history + [out[j].detach()])[-cfg.window_blocks:]
            s.num_blocks += 1
            s.fresh = False
        return out

    def decode(self, states: Sequence[VideoState], latents: torch.Tensor) -> np.ndarray:
        """Causal decode of one block per session -> uint8 frames (B, frames_per_block, H, W, 3)."""
        prev = torch.stack([s.prev_latent if s.prev_latent is not None else torch.zeros_like(latents[0, 0])
                            for s in states])
        has_prev = torch.tensor([s.prev_latent is not None for s in states], device=self.device)
        prev = torch.where(has_prev[:, None, None, None], prev, (-self.ae.latent_mean / self.ae.latent_std
                                                                 )[None, :, None, None].to(prev.dtype))
        frames = self.ae.decode(latents, prev)  # (B, N, 3, H, W)
        for j, s in enumerate(states):
            s.prev_latent = latents[j, -1]
        if self.cfg.display_scale != 1:
            b, n = frames.shape[:2]
            frames = F.interpolate(frames.flatten(0, 1), scale_factor=self.cfg.display_scale, mode="bilinear",
                                   align_corners=False).unflatten(0, (b, n))
        return to_uint8(frames.float()).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """Summary for /healthz, with the prompt vocabulary the default model was trained on.

        Clients show it: prompts outside it give arbitrary pictures.
        """
        vocabulary = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES), "motion": list(MOTIONS),
                      "background": list(BACKGROUNDS)}
        examples = [Scene("red", "circle", "large", "right", "black").prompt(),
                    Scene("yellow", "square", "large", "left", "gray").prompt(),
                    Scene("green", "circle", "small", "down", "navy").prompt(),
                    Scene("purple", "triangle", "small", "still", "black").prompt()]
        return {**super().describe(), "config": self.cfg.describe(), "switch": self.default_switch,
                "vocabulary": vocabulary, "example_prompts": examples}


def default_checkpoint_exists() -> bool:
    """Whether the shipped checkpoint is present (tests skip the trained-model checks without it)."""
    return Path(DEFAULT_CHECKPOINT).exists()
