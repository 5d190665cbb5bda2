#!/usr/bin/env python3
"""Bench of model `video` (JSON lines). Speed, and quality measured against the procedural ground truth.

CPU, default config (the shipped checkpoint):
    python bench/video.py                          # speed + switch table + a 3-minute drift rollout
    python bench/video.py --drift-minutes 30       # the issue's 30-minute drift (about 15 min of CPU)
Lines: `speed` (block latency, fps, first-frame latency, recache/clear/keep latency; 1..N streams),
`switch` (per strategy: prompt adherence before/after a switch, frames until the new prompt is followed,
smoothness = frame-difference spike at the switch vs normal, beside the spike of the same switch rendered
procedurally, object presence), `drift` (adherence and
image statistics per minute of a long rollout with a prompt switch every 10 s).

Adherence: :func:`models.video.scenes.detect` reads colour, shape, size, motion and background back
from each block's frames with plain image statistics; a score is the share of attributes matching the
prompt (it is ~1.0 on the rendered training clips themselves).

GPU, paper config (Wan2.1-1.3B shape, 832x480, bf16, random weights; UNTESTED here: no GPU in the
session that wrote it):
    python bench/video.py --device cuda --config paper [--streams 1 4] [--anchor /path/longlive_anchor.py]
Lines: `gpu` per stream count: denoising-loop fps (DiT only), fps with streaming decode (DiT + per-block
decode of our causal autoencoder at Wan-like widths, *not* the Wan VAE), block latency, recache latency,
peak memory. ``--anchor`` runs shared/anchors/longlive_anchor.py in the same process's card afterwards and
re-prints its lines tagged ``anchor`` so the two can be compared as a ratio in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.base import ControlEvent, StepInput  # noqa: E402
from models.video.generator import VideoGenerator  # noqa: E402
from models.video.scenes import (  # noqa: E402
    ATTRIBUTES,
    Scene,
    adherence,
    detect,
    mean_scores,
    random_scene,
    render_timeline,
    switch_scene,
)


def out(kind: str, **kw) -> None:
    print(json.dumps({"type": kind, **kw}), flush=True)


def steps(gen: VideoGenerator, states: list, n: int) -> list[np.ndarray]:
    """Step a batch n times; per session its frames (n*frames_per_block, h, w, 3) at the model's resolution."""
    chunks = [gen.step(states, [StepInput()] * len(states), len(states)) for _ in range(n)]
    s = gen.cfg.display_scale  # the served video is upsampled; the detector reads the model's pixels
    return [np.concatenate([c[i].video[:, ::s, ::s] for c in chunks]) for i in range(len(states))]


def timed_steps(gen: VideoGenerator, states: list, n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        gen.step(states, [StepInput()] * len(states), len(states))
        lat.append(time.perf_counter() - t0)
    return lat


def sync(gen: VideoGenerator) -> None:
    if gen.device.type == "cuda":
        torch.cuda.synchronize()


# -- CPU: speed ---------------------------------------------------------------------------------------
def bench_speed(gen: VideoGenerator, max_streams: int, num_blocks: int) -> None:
    fpb = gen.cfg.video_frames_per_block
    block_s = fpb / gen.cfg.fps
    t0 = time.perf_counter()
    state = gen.open_session({"prompt": "a small blue square moving left on a gray background"})
    gen.step([state], [StepInput()], 1)
    first_frame_s = time.perf_counter() - t0
    timed_steps(gen, [state], 3)
    lat = timed_steps(gen, [state], num_blocks)
    switch_ms = {}
    for strategy in ("recache", "clear", "keep"):
        t0 = time.perf_counter()
        gen.apply_switch(state, f"a large {strategy} red circle moving up on a black background", strategy)
        switch_ms[strategy] = round(1000 * (time.perf_counter() - t0), 2)
        gen.step([state], [StepInput()], 1)
        gen.step([state], [StepInput()], 1)
    gen.close_session(state)
    med = statistics.median(lat)
    out("speed", streams=1, threads=torch.get_num_threads(), block_frames=fpb, block_ms_p50=round(1000 * med, 1),
        block_ms_p90=round(1000 * float(np.percentile(lat, 90)), 1), fps=round(fpb / med, 1),
        real_time_factor=round(med / block_s, 3), first_frame_ms=round(1000 * first_frame_s, 1),
        switch_ms=switch_ms, note="first_frame_ms: open (prompt encode) + first block (8 steps) + decode; "
        "switch_ms includes the prompt encoding (cached prompts cost ~0)")
    n = 2
    while n <= max_streams:
        states = [gen.open_session({"seed": i}) for i in range(n)]
        timed_steps(gen, states, 2)
        med = statistics.median(timed_steps(gen, states, max(3, num_blocks // n)))
        out("speed", streams=n, block_ms_p50=round(1000 * med, 1), fps_per_stream=round(fpb / med, 1),
            real_time_factor=round(med / block_s, 3))
        for s in states:
            gen.close_session(s)
        n *= 2


# -- CPU: quality ---------------------------------------------------------------------------------------
def score_blocks(frames: np.ndarray, scenes: list[Scene], fpb: int) -> list[dict[str, float]]:
    """Adherence of each block (after the first) of one session against the scene it was asked for."""
    scores = []
    for b in range(1, len(scenes)):
        d = detect(frames[b * fpb:(b + 1) * fpb], frames[b * fpb - 1])
        scores.append({**adherence(d, scenes[b]), "present": float(d["colour"] is not None)})
    return scores


def switch_trial(gen: VideoGenerator, strategy: str, num_sessions: int, before: int, after: int, seed: int):
    """``num_sessions`` streams: `before` blocks of scene A, a switch to B, `after` blocks; per-block scores."""
    rng = np.random.default_rng(seed)
    a_scenes = [random_scene(rng) for _ in range(num_sessions)]
    b_scenes = [switch_scene(s, rng) for s in a_scenes]
    states = [gen.open_session({"prompt": s.prompt(), "seed": seed + i, "switch": strategy})
              for i, s in enumerate(a_scenes)]
    frames_a = steps(gen, states, before)
    for st, b in zip(states, b_scenes, strict=True):
        gen.apply_switch(st, b.prompt(), strategy)
    frames_b = steps(gen, states, after)
    for st in states:
        gen.close_session(st)
    fpb = gen.cfg.video_frames_per_block
    results = []
    for i in range(num_sessions):
        frames = np.concatenate([frames_a[i], frames_b[i]])
        scenes = [a_scenes[i]] * before + [b_scenes[i]] * after
        results.append((frames, scores_and_changes(frames, scenes, a_scenes[i], b_scenes[i], before, fpb)))
    return results


def scores_and_changes(frames, scenes, a: Scene, b: Scene, before: int, fpb: int) -> dict:
    scores = score_blocks(frames, scenes, fpb)  # index k = block k + 1
    changed = [n for n in ATTRIBUTES if getattr(a, n) != getattr(b, n)]
    follow_block = None
    for k in range(before - 1, len(scores)):
        if all(scores[k][n] == 1.0 for n in changed):
            follow_block = k + 1 - before
            break
    # the same switch rendered procedurally: how large a jump the switch itself is in the ground truth
    truth = render_timeline([a] * (before * fpb) + [b] * (len(frames) - before * fpb),
                            np.array([frames.shape[2] / 2, frames.shape[1] / 2]), frames.shape[1])
    return {"before": scores[1:before - 1], "after": scores[before + 1:], "changed": changed,
            "follow_blocks": follow_block, "spike": switch_spike(frames, before * fpb),
            "spike_truth": switch_spike(truth, before * fpb)}


def switch_spike(frames: np.ndarray, first_new: int) -> float:
    """Mean absolute frame difference across the switch over the median difference elsewhere."""
    diffs = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # (N-1,)
    cut = first_new - 1  # difference between the last frame of A and the first of B
    normal = float(np.median(np.delete(diffs, [cut])))
    return float(diffs[cut]) / max(normal, 1e-3)


def bench_switch(gen: VideoGenerator, num_sessions: int, seed: int) -> None:
    fpb = gen.cfg.video_frames_per_block
    for strategy in ("recache", "clear", "keep"):
        results = switch_trial(gen, strategy, num_sessions, before=12, after=12, seed=seed)
        stats = [r[1] for r in results]
        follow = [s["follow_blocks"] for s in stats]
        followed = [f for f in follow if f is not None]
        unchanged_after = [np.mean([blk[n] for n in ATTRIBUTES if n not in s["changed"]])
                           for s in stats for blk in s["after"]]
        changed_after = [np.mean([blk[n] for n in s["changed"]]) for s in stats for blk in s["after"]]
        out("switch", strategy=strategy, streams=num_sessions,
            adherence_before=mean_scores([b for s in stats for b in s["before"]]),
            adherence_after=mean_scores([b for s in stats for b in s["after"]]),
            changed_attributes_followed=round(float(np.mean(changed_after)), 3),
            unchanged_attributes_kept=round(float(np.mean(unchanged_after)), 3),
            followed_within_run=f"{len(followed)}/{len(follow)}",
            frames_until_followed_median=(fpb * float(np.median(followed))) if followed else None,
            switch_spike_vs_normal_median=round(float(np.median([s["spike"] for s in stats])), 2),
            same_switch_rendered_spike_median=round(float(np.median([s["spike_truth"] for s in stats])), 2))
        if strategy == "recache":
            save_strip(results[0][0], Path("out/video_switch_recache.png"), fpb)


def save_strip(frames: np.ndarray, path: Path, fpb: int) -> None:
    """One frame per block, side by side, for a human look (written only when PIL is installed)."""
    try:
        from PIL import Image
    except ImportError:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(list(frames[::fpb][:24]), axis=1)).save(path)


def bench_drift(gen: VideoGenerator, minutes: float, seed: int) -> None:
    """One long stream, a new prompt every 10 s: adherence and image statistics per minute."""
    rng = np.random.default_rng(seed)
    fpb, fps = gen.cfg.video_frames_per_block, gen.cfg.fps
    blocks_per_switch = int(10 * fps / fpb)
    blocks_per_min = int(60 * fps / fpb)
    scene = random_scene(rng)
    state = gen.open_session({"prompt": scene.prompt(), "seed": seed})
    per_minute: list[list[dict[str, float]]] = [[]]
    stats: list[list[float]] = [[]]
    prev = None
    t0 = time.perf_counter()
    for b in range(int(minutes * blocks_per_min)):
        if b and b % blocks_per_switch == 0:
            scene = switch_scene(scene, rng)
            gen.handle_event(state, ControlEvent("prompt", {"text": scene.prompt()}))
        frames = gen.step([state], [StepInput()], 1)[0].video
        if b % blocks_per_switch >= 2 and prev is not None:  # settled blocks only
            d = detect(frames[:, ::gen.cfg.display_scale, ::gen.cfg.display_scale],
                       prev[::gen.cfg.display_scale, ::gen.cfg.display_scale])
            per_minute[-1].append({**adherence(d, scene), "present": float(d["colour"] is not None)})
            stats[-1].append(float(frames.astype(np.float32).std()))
        prev = frames[-1]
        if (b + 1) % blocks_per_min == 0:
            out("drift", minute=len(per_minute), adherence=mean_scores(per_minute[-1]),
                pixel_std=round(float(np.mean(stats[-1])), 2), elapsed_s=round(time.perf_counter() - t0))
            per_minute.append([])
            stats.append([])
    gen.close_session(state)


# -- GPU: paper shape -----------------------------------------------------------------------------------
def bench_gpu(a: argparse.Namespace) -> None:
    gen = VideoGenerator(device=a.device, config=a.config, dtype=a.dtype, max_sessions=max(a.streams))
    cfg = gen.cfg
    out("config", device=torch.cuda.get_device_name() if gen.device.type == "cuda" else "cpu", dtype=a.dtype,
        model=cfg.describe(), params_m=round(sum(p.numel() for p in gen.model.parameters()) / 1e6, 1),
        note="random weights; text features are random (umT5 not included); decode = our causal AE, not Wan VAE")
    fpb = cfg.video_frames_per_block
    for n in a.streams:
        states = [gen.open_session({"seed": i}) for i in range(n)]
        if gen.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        warm = cfg.sink_blocks + cfg.window_blocks + 2
        for _ in range(warm):  # fill the cache to its steady state
            gen.step(states, [StepInput()] * n, n)
        loop_lat, full_lat = [], []
        for _ in range(a.blocks):
            sync(gen)
            t0 = time.perf_counter()
            gen.generate(states, cfg.num_steps)  # DiT only: 4 denoising passes + the cache-write pass
            sync(gen)
            loop_lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            gen.step(states, [StepInput()] * n, n)  # + streaming decode to uint8 frames
            sync(gen)
            full_lat.append(time.perf_counter() - t0)
        rec = []
        for i in range(3):
            sync(gen)
            t0 = time.perf_counter()
            gen.apply_switch(states[0], f"prompt {i}", "recache")
            sync(gen)
            rec.append(time.perf_counter() - t0)
        loop, full = statistics.median(loop_lat), statistics.median(full_lat)
        peak = torch.cuda.max_memory_allocated() / 2**30 if gen.device.type == "cuda" else None
        out("gpu", streams=n, block_ms_loop=round(1000 * loop, 1), fps_loop_per_stream=round(fpb / loop, 2),
            block_ms_with_decode=round(1000 * full, 1), fps_with_decode_per_stream=round(fpb / full, 2),
            recache_ms=round(1000 * statistics.median(rec), 1), peak_memory_gib=peak)
        for s in states:
            gen.close_session(s)
    if a.anchor:
        cmd = [sys.executable, a.anchor, "--device", a.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            try:
                out("anchor", **json.loads(line))
            except json.JSONDecodeError:
                continue


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default=None, help="default (checkpoint) on cpu, paper on cuda")
    p.add_argument("--checkpoint", default=None, help="CPU: a video checkpoint other than the shipped one")
    p.add_argument("--dtype", default=None, help="float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the target is real time on 1-2 cores)")
    p.add_argument("--blocks", type=int, default=20, help="timed blocks")
    p.add_argument("--max-streams", type=int, default=4, help="CPU: also time 2, 4, ... streams batched")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="GPU: stream counts")
    p.add_argument("--switch-sessions", type=int, default=16, help="CPU: streams per strategy in the switch table")
    p.add_argument("--drift-minutes", type=float, default=3.0)
    p.add_argument("--only", choices=["speed", "switch", "drift"], default=None)
    p.add_argument("--anchor", default=None, help="GPU: path of longlive_anchor.py to run beside ours")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.device != "cpu":
        a.config, a.dtype = a.config or "paper", a.dtype or "bfloat16"
        bench_gpu(a)
        return
    gen = VideoGenerator(config=a.config or "default", checkpoint=a.checkpoint, dtype=a.dtype or "float32",
                         max_sessions=max(a.max_streams, a.switch_sessions))
    if a.only in (None, "speed"):
        bench_speed(gen, a.max_streams, a.blocks)
    if a.only in (None, "switch"):
        bench_switch(gen, a.switch_sessions, a.seed)
    if a.only in (None, "drift"):
        bench_drift(gen, a.drift_minutes, a.seed)


if __name__ == "__main__":
    main()
