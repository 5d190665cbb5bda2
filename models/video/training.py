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
from models.video.model import VideoConfig, VideoDiT

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


def dit_loss(model: VideoDiT, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """Flow-matching loss of the noisy copy, under the teacher-forcing mask."""
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
    err = (v - (noise - x0)).pow(2).mean(-1)  # (B, T)
    w = model.token_repeat(batch.loss_weight)
    return (err * w).sum() / w.sum().clamp(min=1.0)
