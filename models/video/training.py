"""Training data sampling and the loss of the video DiT (teacher forcing with recache training).

A training sequence is what one streaming step sees: the frame sink (the clip's first block) plus a run of
consecutive blocks from later in the clip, at their true frame positions (so the model learns a sink that
is far in the past). Each sequence is laid out as [clean copy | noisy copy] under
:meth:`VideoDiT.teacher_forcing_mask`; every noisy block has its own flow time.

Recache training (LongLive trains this way, and a probe here found recache hurt without it): in part of the
sequences that cross a prompt switch, the clean copies of the pre-switch blocks are conditioned on the *new*
prompt, exactly as KV-recache rewrites them at inference; those pre-switch blocks are then left out of the
loss, since their own denoising never happens under that history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from models.flow import time_grid
from models.video.autoencoder import to_uint8, to_unit
from models.video.model import VideoConfig, VideoDiT
from models.video.scenes import Scene, adherence, detect, next_scene, object_centre, random_scene, render_timeline

MAX_PROMPTS = 4  # distinct prompts one training sequence may hold


@dataclass
class Batch:
    """One batch of training sequences (n blocks each)."""

    latents: torch.Tensor  # (B, n*F, C, h, w) clean latents
    frame_pos: torch.Tensor  # (B, n*F) time position of each latent frame
    clean_prompt: torch.Tensor  # (B, n*F) prompt index (into this row's prompts) conditioning the clean copy
    noisy_prompt: torch.Tensor  # (B, n*F) prompt index conditioning the noisy copy
    loss_weight: torch.Tensor  # (B, n*F) 0 for frames left out of the loss
    text: torch.Tensor  # (B, P, S, text_dim) prompt features
    text_mask: torch.Tensor  # (B, P, S) bool


class LatentClips:
    """Samples training sequences from encoded clips (``latents.npy``, ``prompts.safetensors``, ``meta.json``)."""

    def __init__(self, data: Path, cfg: VideoConfig, seed: int = 0, num_blocks: int | None = None,
                 max_extra_offset: int = 2000) -> None:
        self.cfg = cfg
        self.latents = torch.from_numpy(np.load(data / "latents.npy")).float()  # (clips, L, C, h, w)
        meta = json.loads((data / "meta.json").read_text())
        tf = cfg.time_factor
        # prompt of each latent frame: switches land on block boundaries, so the first video frame's prompt
        self.frame_prompt = torch.tensor([c["prompt_ids"][::tf] for c in meta["clips"]])  # (clips, L)
        feats = load_file(str(data / "prompts.safetensors"))
        self.text, self.text_mask = feats["tokens"].float(), feats["mask"].bool()
        self.num_blocks = num_blocks or (cfg.sink_blocks + cfg.window_blocks + 1)
        self.max_extra_offset = max_extra_offset
        self.rng = np.random.default_rng(seed)

    def _segment_start(self, prompts: np.ndarray, total_blocks: int, p_switch: float) -> int:
        """First block of the run after the sink; prefers runs that cross a prompt switch."""
        cfg, n = self.cfg, self.num_blocks - self.cfg.sink_blocks
        lo, hi = cfg.sink_blocks, total_blocks - n
        starts = np.arange(lo, hi + 1)
        if self.rng.random() < p_switch:
            block_prompt = prompts[:: cfg.block_frames]
            crosses = [s for s in starts if len(set(block_prompt[s:s + n])) > 1]
            if crosses:
                return int(self.rng.choice(crosses))
        return int(self.rng.choice(starts))

    def sample(self, batch: int, p_recache: float = 0.5, p_switch: float = 0.6) -> Batch:
        """A batch of sequences (sink block + a run of blocks), with recache relabelling in part of them."""
        cfg = self.cfg
        fb = cfg.block_frames
        rows = []
        for _ in range(batch):
            c = int(self.rng.integers(self.latents.shape[0]))
            prompts = self.frame_prompt[c].numpy()
            total_blocks = self.latents.shape[1] // fb
            s = self._segment_start(prompts, total_blocks, p_switch)
            n_run = self.num_blocks - cfg.sink_blocks
            frames = np.r_[np.arange(cfg.sink_blocks * fb), np.arange(s * fb, (s + n_run) * fb)]
            pos = frames.copy()
            if self.rng.random() < 0.25:  # a stream older than any clip: the sink lies further back
                pos[cfg.sink_blocks * fb:] += int(self.rng.integers(0, self.max_extra_offset))
            global_prompt = prompts[frames]
            table, local = np.unique(global_prompt, return_inverse=True)
            if len(table) > MAX_PROMPTS:  # rare: keep the sequence but merge the extra prompts into the last
                local = np.minimum(local, MAX_PROMPTS - 1)
                table = table[:MAX_PROMPTS]
            clean_prompt, weight = local.copy(), np.ones(len(frames), dtype=np.float32)
            run = local[cfg.sink_blocks * fb:]
            changes = np.nonzero(run[1:] != run[:-1])[0]
            if len(changes) and self.rng.random() < p_recache:
                cut = cfg.sink_blocks * fb + int(changes[0]) + 1  # first frame under the new prompt
                clean_prompt[cfg.sink_blocks * fb:cut] = local[cut]
                weight[cfg.sink_blocks * fb:cut] = 0.0
            rows.append((self.latents[c, frames], pos, clean_prompt, local, weight, table))
        num_p = max(len(r[5]) for r in rows)
        text = torch.zeros(batch, num_p, *self.text.shape[1:])
        text_mask = torch.zeros(batch, num_p, self.text.shape[1], dtype=torch.bool)
        for i, r in enumerate(rows):
            text[i, : len(r[5])] = self.text[torch.from_numpy(r[5])]
            text_mask[i, : len(r[5])] = self.text_mask[torch.from_numpy(r[5])]
        stack = lambda k, dt: torch.from_numpy(np.stack([r[k] for r in rows])).to(dt)  # noqa: E731
        return Batch(torch.stack([r[0] for r in rows]), stack(1, torch.long), stack(2, torch.long),
                     stack(3, torch.long), stack(4, torch.float32), text, text_mask)


def training_times(num: int, cfg: VideoConfig, generator: torch.Generator) -> torch.Tensor:
    """Flow times for ``num`` blocks: half uniform, half exactly the sampler's grid points."""
    grid = torch.cat([time_grid(cfg.num_steps, cfg.shift)[:-1], time_grid(cfg.first_block_steps, cfg.shift)[:-1]])
    uniform = torch.rand(num, generator=generator)
    pick = grid[torch.randint(len(grid), (num,), generator=generator)]
    return torch.where(torch.rand(num, generator=generator) < 0.5, uniform, pick)


def change_weight(batch: Batch, motion_weight: float) -> torch.Tensor:
    """Per latent cell (B, n*F, h, w): 1 + ``motion_weight`` x how much the true latent changes from the frame before.

    Motion is a sub-cell shift (0.35 latent cells per latent frame) that touches a few edge cells of the
    object out of 64 per frame, so the plain flow loss barely sees whether the object moved or held its place;
    this weight puts the loss where the picture changes (cells with no previous frame in the sequence get 1).
    """
    lat = batch.latents  # (B, n*F, C, h, w)
    change = (lat[:, 1:] - lat[:, :-1]).abs().mean(2)  # (B, n*F-1, h, w)
    consecutive = (batch.frame_pos[:, 1:] - batch.frame_pos[:, :-1] == 1).to(change.dtype)[..., None, None]
    change = torch.cat([torch.zeros_like(change[:, :1]), change * consecutive], dim=1)
    return 1.0 + motion_weight * change


def dit_loss(model: VideoDiT, batch: Batch, generator: torch.Generator, motion_weight: float = 0.0
             ) -> torch.Tensor:
    """Flow-matching loss of the noisy copy, under the teacher-forcing mask (see :func:`change_weight`)."""
    cfg = model.cfg
    b, nf = batch.latents.shape[:2]
    num_blocks = nf // cfg.block_frames
    x0 = model.patchify(batch.latents)  # (B, T, in)
    noise = torch.randn(x0.shape, generator=generator)
    t_block = training_times(b * num_blocks, cfg, generator).view(b, num_blocks)
    t_frame = t_block.repeat_interleave(cfg.block_frames, dim=1)  # (B, n*F)
    t_tok = model.token_repeat(t_frame)  # (B, T)
    xt = (1 - t_tok[..., None]) * x0 + t_tok[..., None] * noise  # the flow path, per token
    block_ids = model.token_repeat(torch.arange(num_blocks).repeat_interleave(cfg.block_frames)[None].expand(b, -1))
    positions = model.positions(batch.frame_pos)
    tokens = torch.cat([x0, xt], dim=1)
    times = torch.cat([torch.zeros_like(t_tok), t_tok], dim=1)
    prompt = torch.cat([model.token_repeat(batch.clean_prompt), model.token_repeat(batch.noisy_prompt)], dim=1)
    mask = model.teacher_forcing_mask(block_ids)
    cond = model.condition(batch.text, batch.text_mask)
    v = model(tokens, times, torch.cat([positions, positions], dim=1), mask, cond, prompt)[:, x0.shape[1]:]
    w = model.token_repeat(batch.loss_weight)
    if motion_weight:
        cell = change_weight(batch, motion_weight)[:, :, None].expand(-1, -1, cfg.latent_channels, -1, -1)
        err = ((v - (noise - x0)).pow(2) * model.patchify(cell)).mean(-1)  # (B, T)
    else:
        err = (v - (noise - x0)).pow(2).mean(-1)  # (B, T)
    return (err * w).sum() / w.sum().clamp(min=1.0)


# -- self-rollout (the fine-tuning stage after teacher forcing) ---------------------------------------------
@dataclass
class _Stream:
    """One self-generated stream: its prompt timeline so far and the clean blocks its cache holds."""

    scene: Scene
    prompt: str
    recache: bool  # the switch strategy of this stream (recache, else keep)
    blocks: list[tuple[int, torch.Tensor, str]]  # (block index, clean latents (F, C, h, w), prompt of its K/V)
    last_frame: np.ndarray | None = None  # the last decoded frame (H, W, 3) uint8


class SelfRollout:
    """Streams the model generates itself (no grad), and the true next block of each, for the flow loss.

    Self-Forcing trains a causal video model on its own rollouts so that what it learns matches what it sees
    when it streams. Here the data is procedural, so the *correct* next block of a self-generated history is
    known exactly: the object is found in the last generated frame (:func:`object_centre`) and the prompt's
    scene is rendered from there (:func:`render_timeline`) and encoded. The history keeps the model's own
    mistakes (a blurred shape, an object that did not move); the target shows what the prompt asks next from
    that state, so the loss teaches recovery (an object held in place starts moving; a wrong shape is redrawn)
    instead of copying the history.

    Every row runs a stream of ``stream_blocks`` blocks with the served schedule (first block from text with
    ``first_block_steps``, then ``num_steps``; a prompt switch at block boundaries (1-3 attributes every
    ``mean_switch_s``, motion only every ``mean_motion_switch_s``) applied by KV-recache or keep, as served).
    All rows are at the same block index, so a training batch is [sink | window | target] for every row.
    """

    def __init__(self, model: VideoDiT, ae, text_encoder, batch: int, stream_blocks: int, seed: int = 0,
                 mean_switch_s: float = 3.0, mean_motion_switch_s: float | None = 1.0, p_recache: float = 0.75
                 ) -> None:
        self.model, self.ae, self.text = model, ae, text_encoder
        self.cfg = model.cfg
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.batch, self.stream_blocks, self.p_recache = batch, stream_blocks, p_recache
        per_block_s = self.cfg.video_frames_per_block / self.cfg.fps
        self.p_switch = per_block_s / mean_switch_s
        self.p_motion = per_block_s / mean_motion_switch_s if mean_motion_switch_s else 0.0
        self.cache = model.new_cache(batch)
        self.slots = [self.cache.allocate() for _ in range(batch)]
        self.scores: list[dict[str, float]] = []  # adherence of every generated block (for the log)
        self._restart()

    def _restart(self) -> None:
        self.cache.clear(self.slots, keep_sink=False)
        self.block = 0
        self.streams = []
        for _ in range(self.batch):
            scene = random_scene(self.rng)
            self.streams.append(_Stream(scene, scene.prompt(self.rng), bool(self.rng.random() < self.p_recache), []))

    def _features(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = zip(*(self.text.encode(p) for p in prompts), strict=True)
        return torch.stack(tokens).float(), torch.stack(mask)

    def _condition(self, prompts: list[str]):
        tokens, mask = self._features(prompts)
        return self.model.condition(tokens[:, None], mask[:, None])

    @torch.no_grad()
    def _switch(self) -> list[Scene]:
        """Advance every stream's prompt to this block (maybe a switch; recache rewrites the window K/V)."""
        cfg, before = self.cfg, [s.scene for s in self.streams]
        if self.block == 0:
            return before
        recache_rows = []
        for i, s in enumerate(self.streams):
            changed = next_scene(s.scene, self.rng, self.p_switch, self.p_motion)
            if changed is not None:
                s.scene, s.prompt = changed, changed.prompt(self.rng)
                if s.recache:
                    recache_rows.append(i)
        window = [b for b in self.streams[0].blocks if b[0] >= cfg.sink_blocks]
        if recache_rows and window:
            latents = torch.stack([torch.cat([b[1] for b in self.streams[i].blocks if b[0] >= cfg.sink_blocks])
                                   for i in recache_rows])  # (R, n*F, C, h, w)
            self.model.recache(self.cache, [self.slots[i] for i in recache_rows], latents,
                               torch.full((len(recache_rows),), window[0][0]),
                               self._condition([self.streams[i].prompt for i in recache_rows]))
            for i in recache_rows:
                s = self.streams[i]
                s.blocks = [(b, z, s.prompt if b >= cfg.sink_blocks else p) for b, z, p in s.blocks]
        return before

    @torch.no_grad()
    def _targets(self, before: list[Scene]) -> torch.Tensor:
        """The true block at ``self.block`` of every stream, latents (B, F, C, h, w)."""
        cfg = self.cfg
        fpb, size = cfg.video_frames_per_block, cfg.width
        clips = []
        for s, prev_scene in zip(self.streams, before, strict=True):
            centre = object_centre(s.last_frame) if s.last_frame is not None else None
            if centre is None:  # first block, or the object was lost: it (re)appears anywhere
                frames = render_timeline([s.scene] * fpb, self.rng.uniform(0, size, 2), size, cfg.fps)
            else:  # the last generated frame moves on under its own scene, then the new one
                frames = render_timeline([prev_scene] + [s.scene] * fpb, np.array(centre), size, cfg.fps)[1:]
            clips.append(frames)
        return self.ae.encode(to_unit(torch.from_numpy(np.stack(clips))))

    def sample(self) -> Batch:
        """A training batch for the next block of every stream: [sink | window | true next block]."""
        cfg = self.cfg
        if self.block >= self.stream_blocks:
            self._restart()
        before = self._switch()
        target = self._targets(before)
        fb = cfg.block_frames
        rows = []
        for i, s in enumerate(self.streams):
            history = [b for b in s.blocks if b[0] < cfg.sink_blocks] + \
                [b for b in s.blocks if b[0] >= cfg.sink_blocks]
            table = list(dict.fromkeys([p for _, _, p in history] + [s.prompt]))
            lat = torch.cat([z for _, z, _ in history] + [target[i]])
            pos = np.concatenate([np.arange(b * fb, (b + 1) * fb) for b, _, _ in history]
                                 + [np.arange(self.block * fb, (self.block + 1) * fb)])
            prompt = np.repeat([table.index(p) for _, _, p in history] + [table.index(s.prompt)], fb)
            weight = np.r_[np.zeros(len(history) * fb, np.float32), np.ones(fb, np.float32)]
            rows.append((lat, pos, prompt, weight, table))
        num_p = max(len(r[4]) for r in rows)
        text = torch.zeros(self.batch, num_p, self.cfg.text_tokens, self.cfg.text_dim)
        text_mask = torch.zeros(self.batch, num_p, self.cfg.text_tokens, dtype=torch.bool)
        for i, r in enumerate(rows):
            text[i, : len(r[4])], text_mask[i, : len(r[4])] = self._features(r[4])
        prompt = torch.from_numpy(np.stack([r[2] for r in rows])).long()
        return Batch(torch.stack([r[0] for r in rows]), torch.from_numpy(np.stack([r[1] for r in rows])).long(),
                     prompt, prompt, torch.from_numpy(np.stack([r[3] for r in rows])), text, text_mask)

    @torch.no_grad()
    def advance(self) -> None:
        """Generate this block of every stream with the current model (the served schedule), decode it, move on."""
        cfg = self.cfg
        steps = cfg.first_block_steps if self.block == 0 else cfg.num_steps
        noise = torch.randn(steps, self.batch, cfg.tokens_per_block, cfg.latent_channels * cfg.patch**2,
                            generator=self.gen)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate_block(self.cache, self.slots, torch.full((self.batch,), self.block),
                                        self._condition([s.prompt for s in self.streams]), noise, steps)
        self.model.train(was_training)
        prev = torch.stack([s.blocks[-1][1][-1] for s in self.streams]) if self.block else None
        frames = to_uint8(self.ae.decode(out, prev)).numpy()  # (B, fpb, H, W, 3)
        for i, s in enumerate(self.streams):
            d = detect(frames[i], s.last_frame)
            self.scores.append({**adherence(d, s.scene), "present": float(d["colour"] is not None)})
            s.last_frame = frames[i, -1]
            s.blocks.append((self.block, out[i], s.prompt))
            sink = [b for b in s.blocks if b[0] < cfg.sink_blocks]
            s.blocks = sink + [b for b in s.blocks if b[0] >= cfg.sink_blocks][-cfg.window_blocks:]
        self.block += 1
