#!/usr/bin/env python3
"""Render the video family's procedural training data: long clips with prompt switches and per-frame truth.

Writes ``<out>/frames.npy`` (num_clips, num_frames, size, size, 3) uint8, ``<out>/meta.json`` (the prompt
text of every frame as an index into a prompt table, and the scene attributes of every frame).
Reproducible: the same ``--seed`` gives the same files.

    python scripts/make_video_data.py --out data/video --num-clips 240 --num-frames 160
    python scripts/make_video_data.py --out data/video_motion --motion-switch-s 1.0   # the motion fine-tune's data
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from models.video.scenes import render_clip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/video")
    p.add_argument("--num-clips", type=int, default=240)
    p.add_argument("--num-frames", type=int, default=160, help="frames per clip (16 fps)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--block-frames", type=int, default=4, help="video frames per model block: switches land on them")
    p.add_argument("--motion-switch-s", type=float, default=None,
                   help="add motion-only prompt switches, this many seconds apart on average (default: none)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    frames = np.lib.format.open_memmap(out / "frames.npy", mode="w+", dtype=np.uint8,
                                       shape=(a.num_clips, a.num_frames, a.size, a.size, 3))
    prompt_ids: dict[str, int] = {}
    clips_meta = []
    t0 = time.time()
    for i in range(a.num_clips):
        clip = render_clip(rng, a.num_frames, a.size, switch_every_frames=a.block_frames,
                           mean_motion_switch_s=a.motion_switch_s)
        frames[i] = clip.frames
        clips_meta.append({
            "prompt_ids": [prompt_ids.setdefault(t, len(prompt_ids)) for t in clip.prompts],
            "scenes": [asdict(s) for s in clip.scenes],
        })
    frames.flush()
    meta = {"prompts": list(prompt_ids), "clips": clips_meta, "size": a.size, "fps": 16.0, "seed": a.seed,
            "motion_switch_s": a.motion_switch_s}
    (out / "meta.json").write_text(json.dumps(meta))
    print(json.dumps({"clips": a.num_clips, "frames": a.num_clips * a.num_frames, "prompts": len(prompt_ids),
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
