"""Shared layers: cached attention streams exactly like the offline pass; rotary positions are relative."""

import torch

from models.cache import RingKVCache, offline_mask
from models.layers import CachedSelfAttention, Rope


def test_cached_attention_streaming_equals_offline():
    torch.manual_seed(0)
    dim, heads, window, sink, chunk, n = 16, 2, 6, 2, 3, 24
    attn = CachedSelfAttention(dim, heads, rope=Rope(dim // heads)).eval()
    x = torch.randn(2, n, dim)
    labels = torch.arange(n)[None].expand(2, n)
    offline = attn(x, labels, offline_mask(labels, window, sink))

    # the ring must hold the window plus one chunk so every query of a chunk finds its keys
    cache = RingKVCache(
        num_layers=1, num_slots=4, num_heads=heads, head_dim=dim // heads, window=window + chunk, sink=sink
    )
    slots = [cache.allocate(), cache.allocate()]
    pieces = []
    for start in range(0, n, chunk):
        lab = labels[:, start : start + chunk]
        index = cache.reserve(slots, lab)
        mask = cache.mask(slots, lab, window=window)
        pieces.append(attn(x[:, start : start + chunk], lab, mask, cache=cache, layer=0, slots=slots, index=index))
    torch.testing.assert_close(torch.cat(pieces, 1), offline, atol=1e-5, rtol=1e-5)


def test_block_labels_give_block_causal_attention():
    """Every token of a block shares a label: tokens see their whole block and earlier blocks."""
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    mask = offline_mask(labels, window=10)[0, 0]
    assert mask[0].tolist() == [True, True, False, False, False, False]
    assert mask[3].tolist() == [True, True, True, True, False, False]


def test_rope_scores_depend_only_on_relative_position():
    rope = Rope(8)
    q = torch.randn(1, 1, 1, 8)
    k = torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        return (rope(q, torch.tensor([[pq]])) * rope(k, torch.tensor([[pk]]))).sum()

    torch.testing.assert_close(score(5, 3), score(1_000_005, 1_000_003), atol=1e-4, rtol=1e-4)


def test_rope_multi_axis_shapes():
    rope = Rope(12, axes_dims=(4, 4, 4))
    x = torch.randn(2, 5, 3, 12)
    pos = torch.randint(0, 10, (2, 5, 3))
    assert rope(x, pos).shape == x.shape
