"""The shipped video checkpoint: DiT + autoencoder weights (float16) and both configs in one safetensors file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.video.autoencoder import AutoencoderConfig, LatentAutoencoder
from models.video.model import VideoConfig, VideoDiT

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "video_default.safetensors"


def save_checkpoint(path: str | Path, cfg: VideoConfig, model: VideoDiT, ae: LatentAutoencoder) -> None:
    """Write both models in float16 (buffers such as latent statistics stay float32)."""
    tensors = {}
    for prefix, module in (("dit.", model), ("ae.", ae)):
        for name, t in module.state_dict().items():
            half = t.is_floating_point() and name not in ("latent_mean", "latent_std")
            tensors[prefix + name] = (t.half() if half else t).contiguous()
    meta = {"video_config": json.dumps(asdict(cfg)), "ae_config": json.dumps(asdict(ae.cfg))}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_checkpoint(path: str | Path = DEFAULT_CHECKPOINT) -> tuple[VideoConfig, VideoDiT, LatentAutoencoder]:
    """Read a checkpoint written by :func:`save_checkpoint`; models come back float32, in eval mode."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    cfg_fields = json.loads(meta["video_config"])
    ae_fields = json.loads(meta["ae_config"])
    cfg = VideoConfig(**cfg_fields)
    ae_cfg = AutoencoderConfig(**{**ae_fields, "widths": tuple(ae_fields["widths"])})
    tensors = load_file(str(path))
    model, ae = VideoDiT(cfg), LatentAutoencoder(ae_cfg)
    for prefix, module in (("dit.", model), ("ae.", ae)):
        state = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state)
    return cfg, model.eval(), ae.eval()


def random_models(cfg: VideoConfig, seed: int = 0) -> tuple[VideoDiT, LatentAutoencoder]:
    """Randomly initialised DiT + autoencoder of a config's shape (benches of the paper shape, tests).

    The DiT's zero-initialised output layers are filled too, so the random model does real work.
    """
    torch.manual_seed(seed)
    model = VideoDiT(cfg)
    for name, p in model.named_parameters():
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.02 if "head" in name else 0.1 / cfg.dim**0.5)
    widths = (24, 48, 64) if cfg.dim < 512 else (128, 256, 512)
    ae = LatentAutoencoder(AutoencoderConfig(time_factor=cfg.time_factor, latent_channels=cfg.latent_channels,
                                             widths=widths))
    return model.eval(), ae.eval()
