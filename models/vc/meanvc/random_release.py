"""A MeanVC weights folder with random weights in the published files, names and shapes (tests, benches).

:func:`write_random_release` writes what ``causalcast weights download meanvc`` would fetch, filled with
random numbers: ``model_200ms.safetensors`` (the DiT, exact published names and shapes), ``vocos.pt``
(TorchScript with Vocos's module tree; the sizes of the mel Vocos: 512 wide, 8 blocks, 640-point FFT),
``wavlm_large_finetune.pth`` (``torch.save({"model": ...})`` with UniSpeech's names, WavLM-Large + ECAPA), and
``fastu2++.pt``. The last is a *stand-in*: the real one is WeNet's TorchScript export of a U2++ conformer,
whose code we do not have; this one is a TorchScript module with the same ``forward_encoder_chunk``
interface and cache layout (attention cache (layers, heads, frames, 2 * d_k), convolution cache
(layers, 1, dim, kernel - 1)) and a conformer's size (12 layers of 256 with 2048-wide feed-forwards, a
15-tap depthwise convolution), so the runtime path and its cost are exercised; its outputs mean nothing.
``tiny=True`` writes small sizes for fast tests. Nothing here touches the network.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.vc.meanvc.dit import DiTConfig, MeanVCDiT
from models.vc.meanvc.speaker import SpeakerModel, WavLMConfig, published_name
from models.vc.meanvc.vocos import Vocos, VocosConfig

TINY_DIT = DiTConfig(dim=64, depth=2, heads=2, head_dim=16, ff_mult=2, mel_dim=80, bn_dim=32, spk_dim=256,
                     mrte_heads=2, mrte_blocks=2, time_freq_dim=32)
TINY_VOCOS = VocosConfig(dim=32, intermediate_dim=48, num_layers=2, n_fft=320)
TINY_WAVLM = WavLMConfig(dim=32, layers=2, heads=4, ffn_dim=48, conv_dim=32, pos_kernel=16, pos_groups=4,
                         num_buckets=40, max_distance=60)


class StandInLayer(nn.Module):
    """One conformer-like layer of the stand-in: cached self-attention, causal depthwise conv, feed-forward."""

    def __init__(self, dim: int, heads: int, ffn: int, kernel: int) -> None:
        super().__init__()
        self.heads, self.d_k, self.kernel = heads, dim // heads, kernel
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.dw = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, att: torch.Tensor, cnn: torch.Tensor, has_cache: bool,
                required_cache_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """X (1, T, dim), this layer's caches -> x and its new caches."""
        t = x.shape[1]
        q, k, v = self.qkv(self.norm1(x)).view(t, 3, self.heads, self.d_k).permute(1, 2, 0, 3).unbind(0)
        if has_cache:
            k = torch.cat([att[:, :, : self.d_k], k], dim=1)
            v = torch.cat([att[:, :, self.d_k :], v], dim=1)
        kv = torch.cat([k, v], dim=-1)  # (H, S, 2 d_k)
        new_att = kv[:, max(kv.shape[1] - required_cache_size, 0) :]
        y = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]  # (H, T, d_k)
        x = x + self.out(y.transpose(0, 1).reshape(t, -1))[None]
        h = self.norm2(x).transpose(1, 2)  # (1, dim, T)
        past = cnn if has_cache else torch.zeros(1, h.shape[1], self.kernel - 1, device=h.device)
        h = torch.cat([past, h], dim=2)
        x = x + F.silu(self.dw(h)).transpose(1, 2)
        x = x + self.ff2(F.silu(self.ff1(self.norm3(x))))
        return x, new_att, h[:, :, -(self.kernel - 1) :]


class StandInASR(nn.Module):
    """WeNet's chunk interface over a conformer-sized stack of attention, feed-forward and causal convolution."""

    def __init__(self, dim: int = 256, layers: int = 12, heads: int = 4, ffn: int = 2048, kernel: int = 15) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, dim, 3, stride=2)
        self.conv2 = nn.Conv2d(dim, dim, 3, stride=2)
        self.embed = nn.Linear(dim * 19, dim)
        self.layers = nn.ModuleList(StandInLayer(dim, heads, ffn, kernel) for _ in range(layers))
        self.final = nn.LayerNorm(dim)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Unused (the export's forward); the runtime calls :meth:`forward_encoder_chunk`."""
        return xs

    @torch.jit.export
    def forward_encoder_chunk(self, xs: torch.Tensor, offset: int, required_cache_size: int,
                              att_cache: torch.Tensor, cnn_cache: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fbank frames (1, T, 80) -> encoder frames (1, (T - 7) // 4 + 1, dim) and the new caches."""
        x = F.relu(self.conv2(F.relu(self.conv1(xs[:, None]))))  # (1, dim, T', 19)
        x = self.embed(x.permute(0, 2, 1, 3).reshape(1, x.shape[2], -1))  # (1, T', dim)
        pos = torch.arange(offset, offset + x.shape[1], dtype=torch.float32, device=x.device)[:, None]
        x = x + torch.sin(pos / 100.0)  # positions matter, as WeNet's
        has_cache = att_cache.shape[0] > 0
        new_att: list[torch.Tensor] = []
        new_cnn: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            att = att_cache[i] if has_cache else att_cache
            cnn = cnn_cache[i] if has_cache else cnn_cache
            x, a, c = layer(x, att, cnn, has_cache, required_cache_size)
            new_att.append(a)
            new_cnn.append(c)
        return self.final(x), torch.stack(new_att), torch.stack(new_cnn)


def _randomise(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of a module's shapes, scaled so activations stay in range."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in module.state_dict().items():
        if not value.is_floating_point():
            out[name] = value
        elif name.endswith(("running_var", "weight_g")) or "norm" in name and name.endswith("weight"):
            out[name] = 1.0 + 0.1 * torch.rand(value.shape, generator=g)
        elif name.endswith("window") or name.endswith("running_mean"):
            out[name] = value
        else:
            fan_in = value[0].numel() if value.dim() > 1 else value.numel()
            out[name] = torch.randn(value.shape, generator=g) / math.sqrt(max(fan_in, 1))
    return out


def speechlike(seconds: float, seed: int, f0_hz: float = 140.0, rate_hz: int = 16_000) -> np.ndarray:
    """A voiced, syllable-modulated test signal (harmonics with vibrato, gaps between syllables)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    f0 = f0_hz * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate_hz
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t + rng.uniform(0, 6)), 0, None)
    return (0.3 * voiced * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_random_release(folder: str | Path, *, tiny: bool = False, seed: int = 0, voices: bool = True) -> Path:
    """Write a random-weights MeanVC folder (with its manifest) and return it."""
    from safetensors.torch import save_file

    from models.audio.dsp import write_wav
    from models.weights import published_model, write_manifest

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dit_cfg, vocos_cfg, wavlm_cfg = (TINY_DIT, TINY_VOCOS, TINY_WAVLM) if tiny else (DiTConfig(), VocosConfig(),
                                                                                   WavLMConfig())
    save_file(_randomise(MeanVCDiT(dit_cfg), seed), str(folder / "model_200ms.safetensors"))
    vocos = Vocos(vocos_cfg)
    vocos.load_state_dict(_randomise(vocos, seed + 1))
    torch.jit.script(vocos).save(str(folder / "vocos.pt"))
    speaker = SpeakerModel(wavlm_cfg, channels=32 if tiny else 512)
    state = {published_name(k): v for k, v in _randomise(speaker, seed + 2).items()}
    torch.save({"model": state}, folder / "wavlm_large_finetune.pth")
    asr = StandInASR(dim=dit_cfg.bn_dim, layers=2 if tiny else 12, ffn=64 if tiny else 2048)
    asr.load_state_dict(_randomise(asr, seed + 3))
    torch.jit.script(asr).save(str(folder / "fastu2++.pt"))
    if voices:
        (folder / "voices").mkdir(exist_ok=True)
        write_wav(folder / "voices" / "example.wav", speechlike(4.0, seed, 180.0), 16_000)
    write_manifest(folder, published_model("meanvc"), {})
    return folder
