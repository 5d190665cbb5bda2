#!/usr/bin/env python3
"""Train the default video model on CPU in two stages, from the data of ``scripts/make_video_data.py``.

Stage ``ae``: the causal latent autoencoder (pixels <-> 8x8 latents, 2 frames per latent frame).
Stage ``dit``: the block-causal DiT with flow matching under teacher forcing (clean history | noisy blocks,
block-causal sink + window mask), prompts per frame with switches, and *recache training*: in part of the
samples that contain a switch, the clean history before the switch is shown under the new prompt (what
KV-recache does at inference), so recache helps instead of hurting.
Stage ``rollout``: self-rollout fine-tuning (after Self-Forcing): the model streams its own history (served
schedule, no grad), and the flow loss is taken on the *true* next block, rendered from where the object is in
the last generated frame (:class:`models.video.training.SelfRollout`).
Stage ``pack``: writes the shipped checkpoint (autoencoder + DiT + configs, float16, safetensors).

Seeded; shares the machine politely (``--threads``, default 1; on a busy 2-core machine 1 thread ran the
DiT 6x faster than 2). What shipped (docs/models/video.md has the details; the DiT stage stops on a
wall-clock budget, so the step count depends on the machine):

    python scripts/make_video_data.py --out data/video
    python scripts/train_video.py ae --steps 1200 --batch 16 --threads 2   # stopped at ~780 steps
    python scripts/train_video.py ae --finetune-decoder --steps 500 --batch 16 --lr 1e-3 --latent-noise 0.2 --seed 1
    python scripts/train_video.py dit --minutes 62 --batch 8               # 3384 steps here
    python scripts/train_video.py pack --out checkpoints/video_default.safetensors

The motion fine-tune on top of it (docs/models/video.md, "Motion"), 30 + 25 minutes:

    python scripts/make_video_data.py --out data/video_motion --motion-switch-s 1.0
    python scripts/train_video.py dit --data data/video_motion --init checkpoints/video_default.safetensors \
        --run-file runs/video/dit_motion.pt --minutes 30 --lr 4e-4 --batch 8 --seed 2       # 2597 steps here
    python scripts/train_video.py rollout --data data/video_motion --init runs/video/dit_motion.pt \
        --run-file runs/video/dit_rollout.pt --minutes 25 --lr 2e-4 --batch 8 --motion-weight 4 --seed 3  # 1207
    python scripts/train_video.py pack --data data/video_motion --dit runs/video/dit_rollout.pt
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from training_log import optimizer_step

from models.video.autoencoder import AutoencoderConfig, LatentAutoencoder, to_unit


def log(**kw) -> None:
    print(json.dumps(kw), flush=True)


def cosine_lr(step: int, progress: float, peak: float, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5% of peak by ``progress`` = 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# -- stage ae ----------------------------------------------------------------------------------------
def train_ae(a: argparse.Namespace) -> None:
    frames = np.load(Path(a.data) / "frames.npy", mmap_mode="r")  # (clips, N, H, W, 3)
    cfg = AutoencoderConfig()
    ae = LatentAutoencoder(cfg)
    out = Path(a.data) / "ae.safetensors"
    if a.finetune_decoder:  # the DiT's latent space is fixed: train only the decoder, encoder frozen
        ae.load_state_dict(load_file(str(out)))
        ae.encoder.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in ae.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    rng = np.random.default_rng(a.seed)
    tf = cfg.time_factor
    t0 = time.time()
    for step in range(a.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, step / a.steps, a.lr)
        clip_ids = rng.integers(0, frames.shape[0], a.batch)
        starts = rng.integers(0, (frames.shape[1] - 2 * tf) // tf, a.batch) * tf
        # two consecutive latent frames per sample, so the decoder learns its causal (t-1) input
        batch = np.stack([frames[c, s:s + 2 * tf] for c, s in zip(clip_ids, starts, strict=True)])
        x = to_unit(torch.from_numpy(batch))  # (B, 2*tf, 3, H, W)
        z = ae.encode(x)
        z_noisy = z + a.latent_noise * torch.randn_like(z)  # a smooth latent space is easier to denoise into
        y = ae.decode(z_noisy)
        # objects are small: weight pixels that differ from the frame's background colour
        bg = x.flatten(-2).median(-1).values[..., None, None]
        weight = 1.0 + 4.0 * ((x - bg).abs().amax(2, keepdim=True) > 0.2).float()
        rec = (weight * (y - x).abs()).mean() + (weight * (y - x).pow(2)).mean()
        loss = rec + a.latent_l2 * z.pow(2).mean()
        optimizer_step(opt, loss, ae.parameters())
        if step % 50 == 0 or step == a.steps - 1:
            log(stage="ae", step=step, loss=round(loss.item(), 5), rec=round(rec.item(), 5),
                z_std=round(z.std().item(), 3), elapsed_s=round(time.time() - t0))
        if a.finetune_decoder and step % 100 == 99:
            save_file(ae.state_dict(), str(out))
    if not a.finetune_decoder:
        # latent statistics over a sample of clips, so the DiT sees unit-variance latents
        with torch.no_grad():
            sample = torch.from_numpy(np.stack([frames[c, :32] for c in range(min(32, frames.shape[0]))]))
            z = ae.encode(to_unit(sample))
            ae.latent_mean.copy_(z.mean(dim=(0, 1, 3, 4)))
            ae.latent_std.copy_(z.std(dim=(0, 1, 3, 4)))
    save_file(ae.state_dict(), str(out))
    log(stage="ae", done=True, seconds=round(time.time() - t0))


# -- stage dit ---------------------------------------------------------------------------------------
def load_ae(data: Path) -> LatentAutoencoder:
    ae = LatentAutoencoder(AutoencoderConfig())
    ae.load_state_dict(load_file(str(data / "ae.safetensors")))
    return ae.eval()


def encode_dataset(data: Path, ae: LatentAutoencoder) -> None:
    """Latents of every clip (clips, L, C, h, w) float16 and prompt embeddings, cached on disk."""
    frames = np.load(data / "frames.npy", mmap_mode="r")
    meta = json.loads((data / "meta.json").read_text())
    if not (data / "latents.npy").exists():
        with torch.no_grad():
            lat = [ae.encode(to_unit(torch.from_numpy(np.ascontiguousarray(frames[i:i + 8])))).half()
                   for i in range(0, frames.shape[0], 8)]
        np.save(data / "latents.npy", torch.cat(lat).numpy())
    if not (data / "prompts.safetensors").exists():
        from models.video.text import PromptEncoder

        enc = PromptEncoder()
        tokens, mask = enc.encode_batch(meta["prompts"])
        save_file({"tokens": tokens.half().contiguous(), "mask": mask.contiguous()}, str(data / "prompts.safetensors"))


def load_dit(path: str | Path) -> dict[str, torch.Tensor]:
    """DiT weights from a shipped checkpoint (.safetensors) or a run file of this script (.pt)."""
    if str(path).endswith(".safetensors"):
        from models.video.checkpoint import load_checkpoint

        return load_checkpoint(path)[1].state_dict()
    return torch.load(path)["model"]


def init_from(path: str | Path, data: Path) -> None:
    """Fine-tuning from a shipped checkpoint: its autoencoder becomes the data folder's (same latent space)."""
    if str(path).endswith(".safetensors") and not (data / "ae.safetensors").exists():
        from models.video.checkpoint import load_checkpoint

        save_file(load_checkpoint(path)[2].state_dict(), str(data / "ae.safetensors"))


def train_dit(a: argparse.Namespace) -> None:
    from models.video.model import VideoConfig, VideoDiT
    from models.video.training import LatentClips, dit_loss

    data = Path(a.data)
    if a.init:
        init_from(a.init, data)
    encode_dataset(data, load_ae(data))
    cfg = VideoConfig.default()
    model = VideoDiT(cfg)
    log(stage="dit", params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3), config=cfg.describe())
    if a.init:
        model.load_state_dict(load_dit(a.init))
        log(stage="dit", init=a.init)
    clips = LatentClips(data, cfg, seed=a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    start_step = 0
    ckpt = Path(a.run_file) if a.run_file else data / "dit.pt"
    if a.resume and ckpt.exists():
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_step = state["step"]
    gen = torch.Generator().manual_seed(a.seed + start_step)
    t0 = time.time()
    deadline = t0 + 60 * a.minutes
    step = start_step
    while step < a.steps and time.time() < deadline:
        # the schedule follows whichever budget runs out first: steps or wall-clock minutes
        progress = max(step / a.steps, (time.time() - t0) / (deadline - t0))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step - start_step, progress, a.lr)
        batch = clips.sample(a.batch, p_recache=a.p_recache)
        loss = dit_loss(model, batch, gen, motion_weight=a.motion_weight)
        optimizer_step(opt, loss, model.parameters())
        step += 1
        if step % 25 == 0:
            log(stage="dit", step=step, loss=round(loss.item(), 4), lr=round(opt.param_groups[0]["lr"], 6),
                elapsed_s=round(time.time() - t0))
        if step % 200 == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    log(stage="dit", done=True, step=step, seconds=round(time.time() - t0))


def train_rollout(a: argparse.Namespace) -> None:
    """Self-rollout fine-tuning: the flow loss of the true next block after the model's *own* history.

    Each step: every stream's next block target is rendered from where the object is in the stream's last
    generated frame (:class:`models.video.training.SelfRollout`); one optimizer step on
    [own sink | own window | true next block] (loss on the last block only, no gradient through the
    rollout); then the model generates that block itself (served schedule, no grad) and the streams move on.
    """
    from models.video.model import VideoConfig, VideoDiT
    from models.video.text import PromptEncoder
    from models.video.training import SelfRollout, dit_loss

    data = Path(a.data)
    if a.init:
        init_from(a.init, data)
    cfg = VideoConfig.default()
    model = VideoDiT(cfg)
    model.load_state_dict(load_dit(a.init or data / "dit.pt"))
    ae = load_ae(data)
    streams = SelfRollout(model, ae, PromptEncoder(max_tokens=cfg.text_tokens), a.batch, a.stream_blocks,
                          seed=a.seed, mean_motion_switch_s=a.motion_switch_s or None)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    ckpt = Path(a.run_file) if a.run_file else data / "dit_rollout.pt"
    gen = torch.Generator().manual_seed(a.seed)
    log(stage="rollout", init=a.init or str(data / "dit.pt"), batch=a.batch, stream_blocks=a.stream_blocks)
    t0 = time.time()
    deadline = t0 + 60 * a.minutes
    step = 0
    model.train()
    while step < a.steps and time.time() < deadline:
        progress = max(step / a.steps, (time.time() - t0) / (deadline - t0))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, progress, a.lr, warmup=50)
        loss = dit_loss(model, streams.sample(), gen, motion_weight=a.motion_weight)
        optimizer_step(opt, loss, model.parameters())
        streams.advance()
        step += 1
        if step % 25 == 0:
            seen, streams.scores = streams.scores, []
            log(stage="rollout", step=step, loss=round(loss.item(), 4), lr=round(opt.param_groups[0]["lr"], 6),
                generated={k: round(float(np.mean([r[k] for r in seen])), 3) for k in seen[0]},
                elapsed_s=round(time.time() - t0))
        if step % 100 == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    log(stage="rollout", done=True, step=step, seconds=round(time.time() - t0))


def pack(a: argparse.Namespace) -> None:
    from models.video.checkpoint import save_checkpoint
    from models.video.model import VideoConfig, VideoDiT

    data = Path(a.data)
    cfg = VideoConfig.default()
    model = VideoDiT(cfg)
    model.load_state_dict(load_dit(a.dit or data / "dit.pt"))
    ae = load_ae(data)
    save_checkpoint(a.out, cfg, model, ae)
    log(stage="pack", out=a.out, megabytes=round(Path(a.out).stat().st_size / 2**20, 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["ae", "dit", "rollout", "pack"])
    p.add_argument("--data", default="data/video")
    p.add_argument("--out", default="checkpoints/video_default.safetensors")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (ae: 2500, dit: 100000 = until --minutes)")
    p.add_argument("--minutes", type=float, default=60.0, help="dit: wall-clock budget")
    p.add_argument("--batch", type=int, default=None, help="ae: 24 pairs; dit: 8 sequences")
    p.add_argument("--lr", type=float, default=None, help="ae: 2e-3; dit: 1e-3")
    p.add_argument("--latent-noise", type=float, default=0.1)
    p.add_argument("--latent-l2", type=float, default=1e-3)
    p.add_argument("--p-recache", type=float, default=0.5, help="dit: share of switch samples trained as recache")
    p.add_argument("--finetune-decoder", action="store_true", help="ae: continue the decoder only (encoder frozen)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", default=None, help="dit/rollout: start from these DiT weights (.safetensors checkpoint "
                   "or a .pt run file); a checkpoint's autoencoder is written to --data when it has none")
    p.add_argument("--run-file", default=None, help="dit: run file (default <data>/dit.pt); rollout: "
                   "<data>/dit_rollout.pt")
    p.add_argument("--dit", default=None, help="pack: the run file to pack (default <data>/dit.pt)")
    p.add_argument("--motion-weight", type=float, default=0.0, help="dit/rollout: extra loss weight on latent cells "
                   "that change from the previous frame (1 + w * |change|; 0 = the plain flow loss)")
    p.add_argument("--stream-blocks", type=int, default=48, help="rollout: blocks per self-generated stream")
    p.add_argument("--motion-switch-s", type=float, default=1.0, help="rollout: mean seconds between motion-only "
                   "switches of the streams' prompts (besides the 1-3 attribute switches every 3 s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.stage == "ae":
        a.steps, a.batch, a.lr = a.steps or 2500, a.batch or 24, a.lr or 2e-3
        train_ae(a)
    elif a.stage == "dit":
        a.steps, a.batch, a.lr = a.steps or 100_000, a.batch or 8, a.lr or 1e-3
        train_dit(a)
    elif a.stage == "rollout":
        a.steps, a.batch, a.lr = a.steps or 100_000, a.batch or 8, a.lr or 2e-4
        train_rollout(a)
    else:
        pack(a)


if __name__ == "__main__":
    main()
