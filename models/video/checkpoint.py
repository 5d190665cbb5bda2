"""The shipped video checkpoint: DiT + autoencoder weights (float16) and both configs in one safetensors file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from models.checkpoint_io import load_tensors, save_tensors, strip_prefix
from models.video.autoencoder import AutoencoderConfig, LatentAutoencoder
from models.video.model import VideoConfig, VideoDiT

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "video_default.safetensors"


def save_checkpoint(path: str | Path, cfg: VideoConfig, model: VideoDiT, ae: LatentAutoencoder) -> None:
    """Write both models in float16 (buffers such as latent statistics stay float32)."""
    tensors = {f"dit.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ae.{k}": v for k, v in ae.state_dict().items()}
    meta = {"video_config": asdict(cfg), "ae_config": asdict(ae.cfg)}
    save_tensors(path, tensors, meta, float32_suffixes=(".latent_mean", ".latent_std"))


def load_checkpoint(path: str | Path = DEFAULT_CHECKPOINT) -> tuple[VideoConfig, VideoDiT, LatentAutoencoder]:
    """Read a checkpoint written by :func:`save_checkpoint`; models come back float32, in eval mode."""
    tensors, meta = load_tensors(path)
    cfg = VideoConfig(**meta["video_config"])
    ae_fields = meta["ae_config"]
    ae_cfg = AutoencoderConfig(**{**ae_fields, "widths": tuple(ae_fields["widths"])})
    model, ae = VideoDiT(cfg), LatentAutoencoder(ae_cfg)
    model.load_state_dict(strip_prefix(tensors, "dit."))
    ae.load_state_dict(strip_prefix(tensors, "ae."))
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
