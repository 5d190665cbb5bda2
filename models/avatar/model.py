"""The avatar motion model (after ARIG): a frame-wise causal transformer with a flow-matching head.

One token per 40 ms video frame. Token t sums an embedding of the previous frame's motion and an embedding
of the frame's condition: dual-track audio features (the agent's speech with a short look-ahead, the
user's microphone strictly causal) and the conversational state from both tracks' voice activity. A causal
transformer over the tokens (sliding window, shared ring KV cache when streaming) gives a context vector
h_t; a small MLP flow head with adaLN samples the frame's motion x_t from noise in a few Euler steps
conditioned on h_t (ARIG's diffusion head, with rectified flow as in ``models/flow.py``). Motion is
continuous, never quantized.

Streaming and offline share every weight and the visibility rule: :meth:`MotionModel.forward` runs a
whole sequence (training; teacher-forced previous motion), :meth:`MotionModel.step` one frame for a batch
of sessions against a :class:`~models.cache.RingKVCache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.cache import RingKVCache, offline_mask
from models.flow import euler_sample
from models.layers import CachedSelfAttention, RMSNorm, Rope, SwiGLU, TimeEmbedding, modulate


@dataclass
class AvatarConfig:
    """Sizes of the motion model. ``default`` is trained on CPU; ``paper`` is for GPU benches."""

    motion_dim: int = 20  # numbers per frame of the motion space (models/avatar/motion.py)
    track_dim: int = 22  # features per frame of one audio track (models/avatar/features.py)
    num_states: int = 7  # conversational states (features.ConvState)
    agent_past: int = 3  # agent-track frames before t in the condition
    agent_ahead: int = 2  # agent-track frames after t (look-ahead; served by buffering agent speech)
    user_past: int = 5  # user-track frames before t (the user track is strictly causal)
    dim: int = 128  # transformer width
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads
    mlp_hidden: int = 256  # SwiGLU hidden width
    window: int = 100  # frames of motion context each frame attends to (4 s)
    head_dim: int = 128  # flow head width
    head_layers: int = 3  # flow head residual blocks
    num_flow_steps: int = 4  # Euler steps when sampling a frame
    noise_scale: float = 0.8  # initial noise of sampling (< 1 trades diversity for smoothness)
    prev_noise: float = 0.05  # training: noise added to the teacher-forced previous motion (exposure bias)

    @property
    def cond_frames(self) -> int:
        """Frames of track features in one frame's condition."""
        return self.agent_past + 1 + self.agent_ahead + self.user_past + 1

    @classmethod
    def preset(cls, name: str) -> AvatarConfig:
        """``default`` (CPU, ~1 M parameters), ``paper`` (GPU-sized, ~90 M parameters) or ``tiny`` (tests)."""
        if name == "default":
            return cls()
        if name == "tiny":
            return cls(dim=32, num_layers=1, num_heads=2, mlp_hidden=64, window=16, head_dim=32, head_layers=1)
        if name == "paper":
            return cls(dim=768, num_layers=12, num_heads=12, mlp_hidden=2048, window=250, head_dim=768, head_layers=6,
                       agent_past=8, agent_ahead=2, user_past=12)  # fmt: skip
        raise ValueError(f"unknown avatar config {name!r} (default, paper, tiny)")

    def to_dict(self) -> dict:
        """JSON-able fields (saved in the checkpoint)."""
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: cached causal self-attention, then a SwiGLU MLP."""

    def __init__(self, cfg: AvatarConfig, rope: Rope) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(cfg.dim), RMSNorm(cfg.dim)
        self.attn = CachedSelfAttention(cfg.dim, cfg.num_heads, rope)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, **cache_args) -> torch.Tensor:
        """X (B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.norm1(x), positions, mask, **cache_args)
        return x + self.mlp(self.norm2(x))


class FlowHead(nn.Module):
    """MLP velocity field v(x_t, t | h) over one frame's motion, with adaLN from h and the flow time."""

    def __init__(self, cfg: AvatarConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(cfg.motion_dim, cfg.head_dim)
        self.cond = nn.Linear(cfg.dim, cfg.head_dim)
        self.time = TimeEmbedding(cfg.head_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.head_dim, elementwise_affine=False) for _ in range(cfg.head_layers))
        self.ada = nn.ModuleList(nn.Linear(cfg.head_dim, 3 * cfg.head_dim) for _ in range(cfg.head_layers))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.head_dim, cfg.head_dim), nn.SiLU(), nn.Linear(cfg.head_dim, cfg.head_dim))
            for _ in range(cfg.head_layers)
        )
        self.out_norm = nn.LayerNorm(cfg.head_dim)
        self.out = nn.Linear(cfg.head_dim, cfg.motion_dim)
        for ada in self.ada:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(ada.weight)
            nn.init.zeros_(ada.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """X (N, motion_dim), t (N,), h (N, dim) -> velocity (N, motion_dim)."""
        c = nn.functional.silu(self.cond(h) + self.time(t))  # (N, head_dim)
        y = self.inp(x)
        for norm, ada, mlp in zip(self.norms, self.ada, self.mlps, strict=True):
            shift, scale, gate = ada(c).chunk(3, dim=-1)
            y = y + gate * mlp(modulate(norm(y), shift, scale))
        return self.out(self.out_norm(y))


class MotionModel(nn.Module):
    """Condition encoder + causal transformer over frames + flow head; see the module docstring."""

    def __init__(self, cfg: AvatarConfig) -> None:
        super().__init__()
        self.cfg = cfg
        cond_in = cfg.cond_frames * cfg.track_dim + cfg.num_states
        self.cond = nn.Sequential(nn.Linear(cond_in, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.motion_in = nn.Linear(cfg.motion_dim, cfg.dim)
        rope = Rope(cfg.dim // cfg.num_heads)
        self.blocks = nn.ModuleList(Block(cfg, rope) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim)
        self.head = FlowHead(cfg)
        # normalisation statistics of the training data (set by training, saved with the weights)
        self.register_buffer("feat_mean", torch.zeros(cfg.track_dim))
        self.register_buffer("feat_std", torch.ones(cfg.track_dim))
        self.register_buffer("motion_mean", torch.zeros(cfg.motion_dim))
        self.register_buffer("motion_std", torch.ones(cfg.motion_dim))

    # -- conditioning --------------------------------------------------------------------------------
    def condition_input(self, agent: torch.Tensor, user: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Per-frame condition vectors (B, T, cond_in) from whole tracks (B, T, track_dim) and states (B, T).

        Frame t sees agent frames t-agent_past..t+agent_ahead and user frames t-user_past..t. The agent
        track may run up to ``agent_ahead`` frames longer than the others (its look-ahead); frames outside
        the tracks are all-zero rows, exactly what streaming holds before a session's first frame.
        """
        cfg = self.cfg
        t = user.shape[1]
        agent = agent[:, : t + cfg.agent_ahead]
        a = nn.functional.pad(agent, (0, 0, cfg.agent_past, t + cfg.agent_ahead - agent.shape[1]))  # (B, P+T+A, F)
        u = nn.functional.pad(user, (0, 0, cfg.user_past, 0))
        agent_win = torch.stack([a[:, i : i + t] for i in range(cfg.agent_past + 1 + cfg.agent_ahead)], 2)
        user_win = torch.stack([u[:, i : i + t] for i in range(cfg.user_past + 1)], 2)  # (B, T, frames, F)
        return self.window_input(agent_win, user_win, states)

    def window_input(self, agent_win: torch.Tensor, user_win: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Conditions (..., cond_in) from feature windows (..., frames, F) of both tracks and states (...)."""
        onehot = nn.functional.one_hot(states, self.cfg.num_states).float()
        feats = self.norm_feat(torch.cat([agent_win, user_win], dim=-2)).flatten(-2)
        return torch.cat([feats, onehot], dim=-1)

    def norm_feat(self, f: torch.Tensor) -> torch.Tensor:
        """Normalise raw track features; all-zero rows (outside a sequence) stay zero."""
        present = (f.abs().sum(-1, keepdim=True) > 0).float()
        return present * (f - self.feat_mean) / self.feat_std

    # -- transformer ---------------------------------------------------------------------------------
    def forward(self, prev_motion: torch.Tensor, cond_in: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Offline: context vectors h (B, T, dim) from normalised previous motion (B, T, D) and conditions."""
        x = self.motion_in(prev_motion) + self.cond(cond_in)  # (B, T, C)
        mask = offline_mask(positions, self.cfg.window)
        for block in self.blocks:
            x = block(x, positions, mask)
        return self.norm(x)

    def step(
        self, cache: RingKVCache, slots: Sequence[int], positions: torch.Tensor, prev_motion: torch.Tensor,
        cond_in: torch.Tensor,
    ) -> torch.Tensor:
        """Streaming: h (B, dim) of one new frame per slot; positions (B,) absolute frame indices."""
        return self.step_frames(cache, slots, positions[:, None], prev_motion[:, None], cond_in[:, None])[:, 0]

    def step_frames(
        self, cache: RingKVCache, slots: Sequence[int], positions: torch.Tensor, prev_motion: torch.Tensor,
        cond_in: torch.Tensor,
    ) -> torch.Tensor:
        """Streaming over T known frames at once (T <= window): positions (B, T) -> h (B, T, dim)."""
        x = self.motion_in(prev_motion) + self.cond(cond_in)  # (B, T, C)
        index = cache.reserve(slots, positions)
        mask = cache.mask(slots, positions, self.cfg.window)
        for layer, block in enumerate(self.blocks):
            x = block(x, positions, mask, cache=cache, layer=layer, slots=slots, index=index)
        return self.norm(x)

    def new_cache(self, num_slots: int, device: torch.device | str = "cpu") -> RingKVCache:
        """A ring KV cache holding ``window`` frames for ``num_slots`` sessions."""
        cfg = self.cfg
        return RingKVCache(num_layers=cfg.num_layers, num_slots=num_slots, num_heads=cfg.num_heads,
                           head_dim=cfg.dim // cfg.num_heads, window=cfg.window, device=device)  # fmt: skip

    # -- flow head -----------------------------------------------------------------------------------
    def sample(self, h: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Normalised motion (N, D) from context vectors (N, dim) and standard noise (N, D)."""
        return euler_sample(lambda x, t: self.head(x, t, h), noise * self.cfg.noise_scale, self.cfg.num_flow_steps)

    @torch.no_grad()
    def rollout(
        self, agent: torch.Tensor, user: torch.Tensor, states: torch.Tensor, generator: torch.Generator,
        prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate motion (T, D) in motion units for one session's tracks (T, F) and states (T,), streaming.

        The agent track may carry ``agent_ahead`` extra frames of look-ahead (see :meth:`condition_input`).

        ``prev`` is the motion before frame 0 (motion units; default: the data mean).
        """
        cond = self.condition_input(agent[None], user[None], states[None])[0]  # (T, cond_in)
        cache = self.new_cache(1, cond.device)
        cache.allocate()
        dev = cond.device
        x = torch.zeros(1, self.cfg.motion_dim, device=dev) if prev is None else self.normalize(prev)[None]
        out = []
        for t in range(cond.shape[0]):
            h = self.step(cache, [0], torch.tensor([t], device=dev), x, cond[t : t + 1])
            noise = torch.randn(1, self.cfg.motion_dim, generator=generator).to(dev)  # a CPU generator: same draws
            x = self.sample(h, noise)
            out.append(x)
        return self.denormalize(torch.cat(out))

    def normalize(self, motion: torch.Tensor) -> torch.Tensor:
        """Motion-space units -> model units."""
        return (motion - self.motion_mean) / self.motion_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> motion-space units."""
        return x * self.motion_std + self.motion_mean


def save_checkpoint(model: MotionModel, path: str, extra: dict | None = None) -> None:
    """Weights and normalisation buffers as safetensors; the config (and ``extra``) as JSON metadata."""
    from models.checkpoint_io import save_tensors

    save_tensors(path, model.state_dict(), {"config": model.cfg.to_dict(), **(extra or {})}, half=False)


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> tuple[MotionModel, dict]:
    """A model from :func:`save_checkpoint`, in eval mode, and the checkpoint's metadata."""
    from models.checkpoint_io import load_tensors

    tensors, meta = load_tensors(path)
    if "config" not in meta:
        raise ValueError(f"{path} is not an avatar checkpoint (no config in its metadata)")
    model = MotionModel(AvatarConfig(**meta.pop("config")))
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta
