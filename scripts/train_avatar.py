"""Train the avatar motion model on CPU from ``scripts/make_avatar_data.py`` conversations.

Usage (reproducible; the shipped checkpoint was made with these arguments, see its metadata):

    python scripts/train_avatar.py --data data/avatar --out checkpoints/avatar_default.safetensors \
        --config default --steps 4000 --batch 16 --seq-frames 200 --seed 0 --max-minutes 60

Teacher forcing: every frame's token sees the teacher's previous frame (with a little noise against
exposure bias) and the flow head learns the rectified-flow velocity of the teacher's frame given the
transformer's context vector. Several noise draws share one transformer pass (the head is cheap). Every
``--eval-every`` steps the model is rolled out autoregressively on a held-out conversation and the
correlation of its jaw with the teacher's and with the agent's speech envelope is logged.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_log import optimizer_step  # noqa: E402

from models.avatar.model import AvatarConfig, MotionModel, save_checkpoint  # noqa: E402
from models.avatar.motion import IDX, MOTION_DIM  # noqa: E402
from models.flow import interpolate, sample_training_times  # noqa: E402

# mouth channels matter most for lip sync; weight their loss up
LOSS_WEIGHT = torch.ones(MOTION_DIM)
for name, w in (("jaw", 3.0), ("mouth_width", 1.5), ("lip_press", 1.5), ("pitch", 2.0), ("smile", 1.5)):
    LOSS_WEIGHT[IDX[name]] = w


class Batches:
    """Random crops of training conversations with their condition windows (never across conversations)."""

    def __init__(self, data: dict[str, np.ndarray], cfg: AvatarConfig, seq: int, rng: np.random.Generator) -> None:
        self.d = {k: torch.from_numpy(data[k]) for k in ("agent", "user", "state", "motion")}
        self.offsets = data["offsets"]
        self.cfg, self.seq, self.rng = cfg, seq, rng
        self.conv_of = np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        """Crops (B, seq) with windows and teacher-forced previous motion."""
        cfg, seq = self.cfg, self.seq
        convs = self.rng.integers(0, len(self.offsets) - 1, batch)
        lo, hi = self.offsets[convs], self.offsets[convs + 1]
        start = lo + (self.rng.random(batch) * (hi - lo - seq)).astype(np.int64)
        frames = torch.from_numpy(start[:, None] + np.arange(seq)[None])  # (B, T) global frame indices
        lo_t, hi_t = torch.from_numpy(lo)[:, None, None], torch.from_numpy(hi)[:, None, None]

        def windows(key: str, rel: range) -> torch.Tensor:
            idx = frames[:, :, None] + torch.tensor(list(rel))[None, None]  # (B, T, W)
            inside = (idx >= lo_t) & (idx < hi_t)
            return self.d[key][idx.clamp(0, len(self.conv_of) - 1)] * inside[..., None]  # (B, T, W, F)

        prev_idx = frames - 1
        first = prev_idx < torch.from_numpy(lo)[:, None]
        prev = self.d["motion"][prev_idx.clamp(min=0)]
        return {
            "agent_win": windows("agent", range(-cfg.agent_past, cfg.agent_ahead + 1)),
            "user_win": windows("user", range(-cfg.user_past, 1)),
            "state": self.d["state"][frames],
            "motion": self.d["motion"][frames],
            "prev": prev,
            "prev_is_start": first,
        }


def set_statistics(model: MotionModel, data: dict[str, np.ndarray]) -> None:
    """Normalisation buffers from the training data."""
    feats = np.concatenate([data["agent"], data["user"]])
    model.feat_mean.copy_(torch.from_numpy(feats.mean(0)))
    model.feat_std.copy_(torch.from_numpy(feats.std(0) + 1e-3))
    model.motion_mean.copy_(torch.from_numpy(data["motion"].mean(0)))
    model.motion_std.copy_(torch.from_numpy(data["motion"].std(0) + 1e-3))


def loss_fn(model: MotionModel, b: dict[str, torch.Tensor], num_draws: int) -> torch.Tensor:
    """Weighted rectified-flow loss of the head given teacher-forced context."""
    cfg = model.cfg
    x0 = model.normalize(b["motion"])  # (B, T, D)
    prev = model.normalize(b["prev"])
    prev = torch.where(b["prev_is_start"][..., None], torch.zeros_like(prev), prev)
    prev = prev + cfg.prev_noise * torch.randn_like(prev)
    cond = model.window_input(b["agent_win"], b["user_win"], b["state"])
    positions = torch.arange(x0.shape[1])[None].expand(x0.shape[0], -1)
    h = model(prev, cond, positions)  # (B, T, C)
    h = h.reshape(-1, h.shape[-1]).repeat(num_draws, 1)  # (N, C)
    x0 = x0.reshape(-1, x0.shape[-1]).repeat(num_draws, 1)
    noise = torch.randn_like(x0)
    t = sample_training_times(x0.shape[0])
    v = model.head(interpolate(x0, noise, t), t, h)
    return ((v - (noise - x0)).pow(2) * LOSS_WEIGHT).mean()


def evaluate(model: MotionModel, heldout: dict[str, np.ndarray], seed: int, max_frames: int = 600) -> dict:
    """Roll out on the first held-out conversation; jaw correlation with the teacher and the speech envelope."""
    model.eval()
    lo, hi = heldout["offsets"][0], min(heldout["offsets"][1], heldout["offsets"][0] + max_frames)
    agent = torch.from_numpy(heldout["agent"][lo:hi])
    motion = model.rollout(agent, torch.from_numpy(heldout["user"][lo:hi]), torch.from_numpy(heldout["state"][lo:hi]),
                           torch.Generator().manual_seed(seed)).numpy()  # fmt: skip
    model.train()
    jaw, teacher = motion[:, IDX["jaw"]], heldout["motion"][lo:hi, IDX["jaw"]]
    energy = np.exp(heldout["agent"][lo:hi, -2])
    return {
        "jaw_vs_teacher": float(np.corrcoef(jaw, teacher)[0, 1]),
        "jaw_vs_energy": float(np.corrcoef(jaw, np.sqrt(energy))[0, 1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/avatar")
    ap.add_argument("--out", default="checkpoints/avatar_default.safetensors")
    ap.add_argument("--config", default="default")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-frames", type=int, default=200)
    ap.add_argument("--draws", type=int, default=4, help="noise draws per context vector")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=60.0, help="stop (and save) after this long")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = dict(np.load(Path(args.data) / "train.npz"))
    heldout = dict(np.load(Path(args.data) / "heldout.npz"))
    cfg = AvatarConfig.preset(args.config)
    model = MotionModel(cfg)
    set_statistics(model, data)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
          f"{len(data['state'])} training frames", flush=True)  # fmt: skip
    batches = Batches(data, cfg, args.seq_frames, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ema = None
    step = 0
    for step in range(1, args.steps + 1):
        loss = loss_fn(model, batches.sample(args.batch), args.draws)
        optimizer_step(opt, loss, model.parameters())
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        minutes = (time.time() - started) / 60
        if step % 50 == 0:
            print(f"step {step} loss {ema:.4f} lr {sched.get_last_lr()[0]:.2e} {minutes:.1f} min", flush=True)
        if step % args.eval_every == 0 or step == args.steps or minutes > args.max_minutes:
            print(json.dumps({"step": step, **evaluate(model, heldout, args.seed)}), flush=True)
            save_checkpoint(model, args.out, {"train_args": vars(args), "steps_done": step,
                                              "train_minutes": round(minutes, 1)})  # fmt: skip
        if minutes > args.max_minutes:
            print("time budget reached", flush=True)
            break
    print(f"done: {step} steps in {(time.time() - started) / 60:.1f} min -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
