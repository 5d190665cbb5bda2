"""Flow matching shared by every family: the interpolation path, training targets, and few-step samplers.

Convention (rectified flow): ``x_t = (1 - t) * x0 + t * noise`` for t in [0, 1]; t = 1 is pure noise, t = 0
is data; the velocity is ``v = noise - x0``, so ``dx/dt = v`` and sampling integrates from t = 1 to 0.

Samplers:
- :func:`euler_sample` integrates the ODE in a few steps, with optional classifier-free guidance (CLEAR's
  flow head: 10 steps, guidance 2.5).
- :func:`renoise_sample` predicts x0 at each step and re-noises it to the next time (few-step distilled
  generators such as LongLive / Self-Forcing: t = 1000, 750, 500, 250 with shift 5).
- :func:`mean_flow_sample` uses an *average* velocity u(z, r, t) over [r, t] (MeanFlow, as in MeanVC),
  exact in one step when u is learned exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t (B,)) -> v
MeanVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (z, r, t) -> u


MAX_TEMPERATURE = 1.5


def check_temperature(value: float) -> float:
    """A sampling temperature (the scale of the starting noise) as a float, or ValueError outside [0, 1.5]."""
    if not 0.0 <= float(value) <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE}], got {value!r}")
    return float(value)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Warp times toward noise (shift > 1), as in SD3/Wan: t' = shift * t / (1 + (shift - 1) * t)."""
    return shift * t / (1 + (shift - 1) * t)


def time_grid(num_steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """``num_steps + 1`` times from 1 down to 0 (uniform, then shifted)."""
    return shift_time(torch.linspace(1.0, 0.0, num_steps + 1, device=device), shift)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The point x_t on the straight path; t broadcasts from (B,) over the trailing dims."""
    t = t.reshape(t.shape + (1,) * (x0.dim() - t.dim()))
    return (1 - t) * x0 + t * noise


def sample_training_times(
    batch: int, device: torch.device | str = "cpu", logit_mean: float = 0.0, logit_std: float = 1.0
) -> torch.Tensor:
    """Training times from a logit-normal distribution (more weight mid-path, as in SD3)."""
    return torch.sigmoid(logit_mean + logit_std * torch.randn(batch, device=device))


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a predicted velocity against ``noise - x0``."""
    return (velocity - (noise - x0)).pow(2).mean()


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: extrapolate from the unconditional toward the conditional velocity."""
    return v_uncond + scale * (v_cond - v_uncond)


@torch.no_grad()
def euler_sample(velocity_fn: VelocityFn, noise: torch.Tensor, num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 (noise) to t = 0 with ``num_steps`` Euler steps."""
    times = time_grid(num_steps, shift, noise.device)
    x = noise
    for i in range(num_steps):
        t, t_next = times[i], times[i + 1]
        v = velocity_fn(x, t.expand(x.shape[0]))
        x = x + (t_next - t) * v
    return x


@torch.no_grad()
def renoise_sample(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    times: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Few-step sampling by x0-prediction and re-noising.

    At each time predict x0 = x_t - t * v, then move to the next time with fresh noise. ``times`` are the
    descending noise levels (without the final 0).
    """
    x = noise
    x0 = noise
    for i, t in enumerate(times):
        tb = t.expand(x.shape[0])
        x0 = x - interpolate_t(t, x) * velocity_fn(x, tb)
        if i + 1 < len(times):
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = interpolate(x0, fresh, times[i + 1].expand(x.shape[0]))
    return x0


def interpolate_t(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) time against a tensor shaped like ``like``."""
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim())) if t.dim() else t


def mean_flow_jumps(num_steps: int) -> list[tuple[float, float]]:
    """The (r, t) interval of each of :func:`mean_flow_sample`'s jumps: equal spans from t = 1 down to r = 0."""
    times = torch.linspace(1.0, 0.0, num_steps + 1).tolist()
    return list(zip(times[1:], times[:-1], strict=True))


@torch.no_grad()
def mean_flow_sample(mean_velocity_fn: MeanVelocityFn, noise: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
    """Sample with an average-velocity model: z_r = z_t - (t - r) * u(z_t, r, t), in ``num_steps`` jumps."""
    z = noise
    for r, t in mean_flow_jumps(num_steps):
        rb, tb = (torch.full((z.shape[0],), v, device=z.device) for v in (r, t))
        z = z - interpolate_t(tb - rb, z) * mean_velocity_fn(z, rb, tb)
    return z


def mean_flow_target(
    mean_velocity_fn: MeanVelocityFn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MeanFlow training: returns (u prediction, stop-gradient target).

    The identity u(z, r, t) = v - (t - r) * du/dt holds along the path, where the total derivative
    du/dt = v · ∂u/∂z + ∂u/∂t is one forward-mode product (tangents (v, 0, 1)). Models must use
    explicit attention (:func:`models.layers.attend` with ``explicit=True``) for ``torch.func.jvp``.
    """
    u, dudt = torch.func.jvp(mean_velocity_fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    target = v - interpolate_t(t - r, z) * dudt
    return u, target.detach()
