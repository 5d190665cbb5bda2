"""Shared by the training scripts: JSON-lines progress logs, the learning-rate schedule, one optimizer step."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch


def log(path: Path, **fields) -> None:
    """Print and append one JSON line of training progress."""
    line = json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in fields.items()})
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")


def lr_at(step: int, total: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: Iterable[torch.Tensor],
                   max_norm: float = 1.0) -> None:
    """Back-propagate ``loss`` and take one step of ``opt``, the gradients of ``params`` clipped to ``max_norm``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
