"""GPU checks of the Wan DiT's streaming path: CUDA graphs replay the eager pass; bf16 stays near float32.

Plain torch (no diffusers, no serving stack), so bench/gpu_suite.sh's parity step runs it with --noconftest.
"""

from __future__ import annotations

import pytest
import torch

from models.video.wan.dit import WanConfig, WanDiT

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _stream(model: WanDiT, num_blocks: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(device, dtype)
    cond = model.condition(text)
    cache = model.new_cache(2, dtype, device)
    slot = cache.allocate()
    blocks = []
    for n in range(num_blocks):
        noise = torch.randn(len(cfg.denoising_steps), 1, cfg.tokens_per_block, cfg.patch_dim, generator=g)
        blocks.append(model.generate_block(cache, [slot], torch.tensor([n]), cond, noise.to(device, dtype)).clone())
    return blocks


@cuda
def test_graphs_replay_the_eager_stream():
    cfg = WanConfig.tiny(dim=64, num_heads=4, ffn_dim=128, latent_h=8, latent_w=8, block_frames=3)
    torch.manual_seed(0)
    model = WanDiT(cfg).cuda().eval()
    eager = _stream(model, 6, torch.float32, "cuda")
    model.use_graphs = True
    graphed = _stream(model, 6, torch.float32, "cuda")
    assert sum(g.num_graphs for g in model._graphs.values()) == 1  # one bucket, one slot range, one prompt
    for a, b in zip(eager, graphed, strict=True):
        assert float((a - b).norm() / a.norm()) < 1e-4


@cuda
def test_bf16_stream_stays_near_float32():
    cfg = WanConfig.tiny(dim=64, num_heads=4, ffn_dim=128, latent_h=8, latent_w=8, block_frames=3)
    torch.manual_seed(0)
    model = WanDiT(cfg).eval()
    reference = _stream(model, 5, torch.float32, "cpu")
    model = model.cuda().to(torch.bfloat16).keep_fp32()
    model.use_graphs = True
    half = _stream(model, 5, torch.bfloat16, "cuda")
    for a, b in zip(reference, half, strict=True):
        assert float((a - b.float().cpu()).norm() / a.norm()) < 5e-2
