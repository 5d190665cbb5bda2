#!/usr/bin/env python3
"""Diagnose how the video DiT follows *motion* (and the other attributes), stage by stage; prints JSON lines.

    python scripts/diagnose_video.py --data data/video --num 32 --stages truth,ae,tf,swap,first,free

``--dit runs/video/dit.pt`` swaps in the DiT of a training run file (the autoencoder stays the checkpoint's).
Stages, each scored by :func:`models.video.scenes.detect` against the scene the clip (or prompt) asked for:

- ``truth``: the rendered training frames themselves (is the detector right?), and the per-block displacement
  in pixels and in latent cells (is the motion large enough to see?);
- ``ae``: the same frames encoded and decoded (the autoencoder's ceiling);
- ``tf``: teacher forcing: the DiT gets the clip's *ground-truth* clean history (sink + window, each block under
  its own prompt, as streaming writes it) and predicts one block, for every ``--steps``;
- ``swap``: the same history, but the prompt of the predicted block asks for a *different* motion: does the
  block follow the text, or continue the history's motion?
- ``first``: the first block (text only): motion inside the block's four frames;
- ``free``: free rollout (the served path) from text: adherence per block position.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.video.autoencoder import to_uint8, to_unit  # noqa: E402
from models.video.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint  # noqa: E402
from models.video.scenes import (  # noqa: E402
    MOTIONS,
    SPEED_SIDES_PER_S,
    Scene,
    adherence,
    detect,
    mean_scores,
    random_scene,
)
from models.video.text import PromptEncoder  # noqa: E402


def out(stage: str, **kw) -> None:
    print(json.dumps({"stage": stage, **kw}), flush=True)


class Probe:
    """The DiT, autoencoder and prompt encoder, with helpers that run the streaming cache by hand."""

    def __init__(self, checkpoint: str, dit: str | None, num: int) -> None:
        self.cfg, self.model, self.ae = load_checkpoint(checkpoint)
        if dit:
            state = torch.load(dit, map_location="cpu")
            self.model.load_state_dict(state.get("ema") or state["model"])
        self.text = PromptEncoder(max_tokens=self.cfg.text_tokens)
        self.cache = self.model.new_cache(num)
        self.num = num

    def cond(self, prompts: list[str]):
        """Condition of one prompt per row."""
        tok, mask = zip(*(self.text.encode(p) for p in prompts), strict=True)
        return self.model.condition(torch.stack(tok)[:, None], torch.stack(mask)[:, None])

    def reset(self, n: int) -> list[int]:
        """Empty the caches of the first ``n`` slots."""
        slots = list(range(n))
        self.cache.clear(slots, keep_sink=False)
        return slots

    @torch.no_grad()
    def write_clean(self, slots: list[int], block: int, latents: torch.Tensor, prompts: list[str]) -> None:
        """Write ground-truth clean block latents (B, F, C, h, w) at ``block`` into the cache (the t = 0 pass)."""
        positions, labels = self.model.block_inputs(torch.full((len(slots),), block))
        self.model._cached_pass(self.cache, slots, self.model.patchify(latents), torch.zeros(()), positions,
                                labels, self.cond(prompts))

    @torch.no_grad()
    def generate(self, slots: list[int], blocks: int | list[int], prompts: list[str], steps: int, seed: int
                 ) -> torch.Tensor:
        """One block per slot at block index ``blocks`` (served sampler), written to the cache."""
        g = torch.Generator().manual_seed(seed)
        cfg = self.cfg
        noise = torch.randn(steps, len(slots), cfg.tokens_per_block, cfg.latent_channels * cfg.patch**2, generator=g)
        index = torch.tensor(blocks) if isinstance(blocks, list) else torch.full((len(slots),), blocks)
        return self.model.generate_block(self.cache, slots, index, self.cond(prompts), noise, steps)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, prev: torch.Tensor | None) -> np.ndarray:
        """Latents (B, L, C, h, w) -> uint8 frames (B, L*tf, H, W, 3); ``prev``: the latent before (None: start)."""
        return to_uint8(self.ae.decode(latents, prev)).numpy()


def with_motion(scene: Scene, rng: np.random.Generator) -> Scene:
    return replace(scene, motion=str(rng.choice([m for m in MOTIONS if m != scene.motion])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/video")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--dit", default=None, help="a train_video.py run file (dit.pt) to use instead of the checkpoint's")
    p.add_argument("--num", type=int, default=32, help="clips / streams per stage")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16], help="tf: sampling steps to try")
    p.add_argument("--free-blocks", type=int, default=12)
    p.add_argument("--stages", default="truth,ae,tf,swap,first,free")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=123)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    stages = set(a.stages.split(","))
    pr = Probe(a.checkpoint, a.dit, a.num)
    cfg = pr.cfg
    fpb, lf = cfg.video_frames_per_block, cfg.block_frames
    data = Path(a.data)
    frames = np.load(data / "frames.npy", mmap_mode="r")
    meta = json.loads((data / "meta.json").read_text())
    rng = np.random.default_rng(a.seed)
    size = frames.shape[2]
    out("setup", px_per_frame=SPEED_SIDES_PER_S * size / cfg.fps, px_per_block=SPEED_SIDES_PER_S * size / cfg.fps * fpb,
        latent_cells_per_block=SPEED_SIDES_PER_S * size / cfg.fps * fpb / cfg.spatial_factor)

    # clips and a predicted block s whose history (blocks s-2, s-1) and block s share one scene
    picks = []
    while len(picks) < a.num:
        c = int(rng.integers(frames.shape[0]))
        scenes = meta["clips"][c]["scenes"]
        s = int(rng.integers(3, frames.shape[1] // fpb))
        if all(scenes[k * fpb] == scenes[s * fpb] for k in (s - 2, s - 1)):
            picks.append((c, s))
    clips = [(np.asarray(frames[c]), meta["clips"][c], s) for c, s in picks]
    prompts_of = lambda clip, b: meta["prompts"][clip["prompt_ids"][b * fpb]]  # noqa: E731
    scene_of = lambda clip, b: Scene(**clip["scenes"][b * fpb])  # noqa: E731

    if "truth" in stages or "ae" in stages:
        rows, rows_ae = [], []
        for fr, clip, s in clips:
            blk, prev = fr[s * fpb:(s + 1) * fpb], fr[s * fpb - 1]
            rows.append(adherence(detect(blk, prev), scene_of(clip, s)))
            if "ae" in stages:
                with torch.no_grad():
                    z = pr.ae.encode(to_unit(torch.from_numpy(fr[(s - 1) * fpb:(s + 1) * fpb]))[None])
                    rec = to_uint8(pr.ae.decode(z)).numpy()[0]
                rows_ae.append(adherence(detect(rec[fpb:], rec[fpb - 1]), scene_of(clip, s)))
        out("truth", adherence=mean_scores(rows))
        if rows_ae:
            out("ae", adherence=mean_scores(rows_ae))

    latents = torch.from_numpy(np.load(data / "latents.npy", mmap_mode="r")[[c for c, _ in picks]].astype(np.float32))

    def history(slots: list[int]) -> None:
        """Sink (block 0) and the window blocks s-2, s-1 of every picked clip, ground truth, own prompts."""
        for i, (_, clip, s) in enumerate(clips):
            for b in (0, s - 2, s - 1):
                pr.write_clean([slots[i]], b, latents[i:i + 1, b * lf:(b + 1) * lf], [prompts_of(clip, b)])

    def score_pred(pred: torch.Tensor, scenes: list[Scene]) -> list[dict[str, float]]:
        rows = []
        for i, (_, _clip, s) in enumerate(clips):
            prev = latents[i:i + 1, s * lf - 1]
            fr = pr.decode(pred[i:i + 1], prev)[0]
            hist = pr.decode(latents[i:i + 1, s * lf - 1:s * lf], latents[i:i + 1, s * lf - 2])[0]
            rows.append(adherence(detect(fr, hist[-1]), scenes[i]))
        return rows

    if "tf" in stages:
        for steps in a.steps:
            slots = pr.reset(len(clips))
            history(slots)
            s_blocks = [s for _, _, s in clips]
            pred = pr.generate(slots, s_blocks, [prompts_of(c, s) for _, c, s in clips], steps, a.seed)
            out("tf", steps=steps, adherence=mean_scores(score_pred(pred, [scene_of(c, s) for _, c, s in clips])))

    if "swap" in stages:
        slots = pr.reset(len(clips))
        history(slots)
        swapped = [with_motion(scene_of(c, s), rng) for _, c, s in clips]
        pred = pr.generate(slots, [s for _, _, s in clips], [x.prompt() for x in swapped], cfg.num_steps, a.seed)
        rows_text = score_pred(pred, swapped)
        rows_hist = score_pred(pred, [scene_of(c, s) for _, c, s in clips])
        out("swap", note="history moves one way, the prompt asks for another",
            follows_text_motion=mean_scores(rows_text)["motion"], keeps_history_motion=mean_scores(rows_hist)["motion"],
            other_attributes=mean_scores(rows_text))

    if "first" in stages or "free" in stages:
        scenes = [random_scene(rng) for _ in range(a.num)]
        prompts = [s.prompt() for s in scenes]
        slots = pr.reset(a.num)
        per_block: list[list[dict[str, float]]] = []
        prev_lat, prev_frame = None, None
        for b in range(a.free_blocks):
            steps = cfg.first_block_steps if b == 0 else cfg.num_steps
            lat = pr.generate(slots, b, prompts, steps, a.seed + b)
            fr = pr.decode(lat, prev_lat)
            rows = []
            for i in range(a.num):
                d = detect(fr[i], None if prev_frame is None else prev_frame[i])
                rows.append({**adherence(d, scenes[i]), "present": float(d["colour"] is not None)})
            per_block.append(rows)
            prev_lat, prev_frame = lat[:, -1], fr[:, -1]
            if "free" not in stages:
                break
        out("first", adherence=mean_scores(per_block[0]))
        if len(per_block) > 1:
            out("free", blocks=a.free_blocks, adherence=mean_scores([r for rows in per_block[1:] for r in rows]),
                motion_by_block=[mean_scores(rows)["motion"] for rows in per_block],
                per_motion={m: round(float(np.mean([r["motion"] for rows in per_block[1:]
                                                    for i, r in enumerate(rows) if scenes[i].motion == m])), 2)
                            for m in MOTIONS if any(s.motion == m for s in scenes)})


if __name__ == "__main__":
    main()
