#!/usr/bin/env python3
"""Bench of the `video` generator on LongLive's network shape (Wan2.1-T2V-1.3B, 832x480), random weights (JSON lines).

Runs the served code path (:class:`models.video.wan.generator.WanVideoGenerator`: DiT on the ring cache,
streaming Wan VAE decode to uint8 frames) with random weights of the real shapes, so it needs no download.
The umT5 encoder is replaced by random prompt features of its shape (it runs once per prompt switch, not per
block; its cost is not in these numbers).

    python bench/video_wan.py --device cuda [--streams 1 2] [--blocks 20] [--no-graphs] [--compile]
    python bench/video_wan.py --tiny --device cpu      # the same steps at toy sizes (DRY_RUN of gpu_suite.sh)

Lines: ``config``; per stream count ``wan`` (block latency of the denoising loop alone and of the whole step,
video fps per stream for both, recache latency, memory after warm-up / after the timed blocks / peak);
``memory_trace`` (allocated bytes after every timed block: flat means the cache never grows).
Targets on one H100/H200 (issue 19): >= 40 fps denoising, >= 30 fps end to end, recache < one block.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.base import StepInput  # noqa: E402
from models.video.wan.dit import WanConfig, WanDiT  # noqa: E402
from models.video.wan.generator import TIME_FACTOR, WanVideoGenerator  # noqa: E402
from models.video.wan.vae import StreamingWanDecoder  # noqa: E402


def out(kind: str, **kw) -> None:
    print(json.dumps({"type": kind, **kw}), flush=True)


class RandomPromptFeatures:
    """umT5's output shape with random values: the bench's stand-in for the 5.7B-parameter text encoder."""

    def __init__(self, cfg: WanConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.num_encoded = 0

    def encode(self, text: str) -> torch.Tensor:
        """Features (text_len, text_dim) drawn from the text's hash."""
        g = torch.Generator().manual_seed(hash(text) % 2**31)
        self.num_encoded += 1
        features = torch.randn(self.cfg.text_len, self.cfg.text_dim, generator=g)
        features[40:] = 0  # a 40-token prompt, zero vectors after it (as Wan pads)
        return features.to(self.device, self.dtype)


def build(args) -> WanVideoGenerator:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = WanConfig.tiny(latent_h=8, latent_w=12, block_frames=3) if args.tiny else WanConfig.longlive()
    vae_sizes = {"dim": 8, "z_dim": 4, "dim_mult": (1, 2, 2, 2), "num_res_blocks": 1, "latent_mean": [0.0] * 4,
                 "latent_std": [1.0] * 4} if args.tiny else {}
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 1.4 B parameters are slow to init on one CPU core
        dit = WanDiT(cfg)
        vae = StreamingWanDecoder(**vae_sizes)
    gen = WanVideoGenerator(dit=dit, decoder=vae, text_encoder=RandomPromptFeatures(cfg, device, dtype),
                            device=args.device, dtype=dtype, max_sessions=max(args.streams), default_prompt="bench")
    gen.dit.use_graphs = not args.no_graphs
    if args.compile:
        gen.compile()
    return gen


def compare(results: Path) -> None:
    """Ratio lines of our one-stream numbers to the anchor's, from one gpu_suite results file."""
    ours, anchors = None, {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == "video_wan" and row.get("type") == "wan" and row.get("streams") == 1:
            ours = row
        if str(row.get("step", "")).startswith("anchor_longlive") and row.get("type") == "generation":
            anchors[row["step"]] = row
    # the anchor run with LongLive's attention budget (window 6 frames) when present
    anchor = anchors.get("anchor_longlive_w6") or anchors.get("anchor_longlive")
    if ours is None or anchor is None:
        out("ratio", error="missing lines", have_ours=ours is not None, have_anchor=anchor is not None)
        return
    a = anchor["block_latency_ms_median"]
    out("ratio", anchor=anchor["step"], anchor_block_ms=a, ours_denoise_block_ms=ours["block_ms_denoise"],
        ours_end_to_end_block_ms=ours["block_ms_end_to_end"], denoise_over_anchor=ours["block_ms_denoise"] / a,
        end_to_end_over_anchor=ours["block_ms_end_to_end"] / a, fps_denoise=ours["fps_denoise_per_stream"],
        fps_end_to_end=ours["fps_end_to_end_per_stream"], target_denoise_met=ours["fps_denoise_per_stream"] >= 40,
        target_end_to_end_met=ours["fps_end_to_end_per_stream"] >= 30,
        recache_under_one_block=ours["recache_under_one_block"],
        memory_flat=abs(ours["memory_end_gib"] - ours["memory_start_gib"]) < 0.01)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", type=Path, help="only print ratios from a gpu_suite results.jsonl")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="toy shapes (CPU, seconds)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 otherwise")
    p.add_argument("--streams", type=int, nargs="+", default=[1])
    p.add_argument("--blocks", type=int, default=12, help="timed blocks per stream count (after 4 warm-up blocks)")
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--attn-backend", default="auto", choices=["auto", "flash", "cudnn", "efficient", "math"])
    args = p.parse_args()
    if args.compare:
        compare(args.compare)
        return
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if not args.device.startswith("cuda"):
        torch.set_num_threads(1)
    gen = build(args)
    cfg = gen.wan_cfg
    cuda = gen.device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(gen.device)) if cuda else (lambda: None)
    frames_per_block = cfg.block_frames * TIME_FACTOR
    out("config", model=cfg.describe(), device=str(gen.device), dtype=args.dtype, graphs=gen.dit.use_graphs,
        compile=args.compile, attn_backend=args.attn_backend, frames_per_block=frames_per_block,
        video=gen.spec.describe()["output_video"], torch=torch.__version__,
        gpu=torch.cuda.get_device_name(gen.device) if cuda else None,
        dit_params_m=sum(p.numel() for p in gen.dit.parameters()) / 1e6,
        vae_decoder_params_m=sum(p.numel() for p in gen.vae.parameters()) / 1e6)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH, "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None)}.get(args.attn_backend)
    with (sdpa_kernel([backend, SDPBackend.MATH]) if backend is not None else contextlib.nullcontext()):
        for n in args.streams:
            states = [gen.open_session({"seed": i, "prompt": f"prompt {i}"}) for i in range(n)]
            inputs = [StepInput() for _ in states]
            for _ in range(4):  # sink + window fill up; graphs are captured on the first steady-state pass
                gen.step(states, inputs, n)
            sync()
            mem_start = torch.cuda.memory_allocated(gen.device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(gen.device)
            dit_s, step_s, trace = [], [], []
            for _ in range(args.blocks):
                t0 = time.perf_counter()
                patches = gen.generate(states)
                sync()
                t1 = time.perf_counter()
                frames = gen.decode(states, patches)
                t2 = time.perf_counter()
                dit_s.append(t1 - t0)
                step_s.append(t2 - t0)
                trace.append(torch.cuda.memory_allocated(gen.device) if cuda else 0)
            assert frames.shape[1] == frames_per_block
            rec = []
            for i in range(3):
                sync()
                t0 = time.perf_counter()
                notice = gen.apply_switch(states[0], f"switched {i}", "recache")
                sync()
                rec.append(time.perf_counter() - t0)
            dit_med, step_med = statistics.median(dit_s), statistics.median(step_s)
            out("wan", streams=n, block_ms_denoise=1e3 * dit_med, block_ms_end_to_end=1e3 * step_med,
                fps_denoise_per_stream=frames_per_block / dit_med,
                fps_end_to_end_per_stream=frames_per_block / step_med,
                decode_ms=1e3 * (step_med - dit_med), recache_ms=1e3 * statistics.median(rec),
                recached_blocks=notice["recached_blocks"], recache_under_one_block=statistics.median(rec) < step_med,
                memory_start_gib=mem_start / 2**30, memory_end_gib=(trace[-1] if trace else 0) / 2**30,
                peak_gib=(torch.cuda.max_memory_allocated(gen.device) if cuda else 0) / 2**30,
                graphs_captured=sum(g.num_graphs for g in gen.dit._graphs.values()),
                output_finite=bool(torch.isfinite(patches).all()))
            out("memory_trace", streams=n, allocated_bytes=trace)
            for s in states:
                gen.close_session(s)


if __name__ == "__main__":
    main()
