"""The shared ring KV cache: wrap-around, sink retention, slot reuse, fixed memory, rewind/clear."""

import pytest
import torch

from models.cache import RingKVCache, SlotAllocator, offline_mask
from models.errors import CapacityError


def make_cache(window=4, sink=2, slots=3):
    return RingKVCache(num_layers=2, num_slots=slots, num_heads=1, head_dim=1, window=window, sink=sink)


def write_tokens(cache, slot, values):
    """Write tokens one call at a time; value == label so the content shows what is held."""
    for value in values:
        labels = torch.tensor([[value]])
        index = cache.reserve([slot], labels)
        kv = torch.full((1, 1, 1, 1), float(value))
        for layer in range(cache.k.shape[0]):
            cache.write(layer, [slot], index, kv, kv)


def held(cache, slot):
    labels = cache.labels[slot]
    k, _ = cache.read(0, [slot])
    return sorted(int(k[0, i, 0, 0]) for i in range(cache.capacity) if labels[i] >= 0)


def test_ring_wraps_and_sink_is_kept():
    cache = make_cache(window=4, sink=2)
    slot = cache.allocate()
    write_tokens(cache, slot, range(10))
    # sink = first two tokens forever; ring = the last four
    assert held(cache, slot) == [0, 1, 6, 7, 8, 9]
    assert cache.num_entries(slot) == 6


def test_memory_does_not_grow():
    cache = make_cache(window=8, sink=2)
    slot = cache.allocate()
    before = (cache.k.data_ptr(), cache.k.shape, cache.bytes_per_slot)
    write_tokens(cache, slot, range(1000))
    assert (cache.k.data_ptr(), cache.k.shape, cache.bytes_per_slot) == before
    assert cache.num_entries(slot) == 10


def test_slots_are_independent_and_reused_clean():
    cache = make_cache(window=4, sink=0, slots=2)
    a, b = cache.allocate(), cache.allocate()
    write_tokens(cache, a, [1, 2, 3])
    write_tokens(cache, b, [7])
    assert held(cache, a) == [1, 2, 3] and held(cache, b) == [7]
    with pytest.raises(CapacityError):
        cache.allocate()
    cache.free(a)
    again = cache.allocate()
    assert again == a and held(cache, again) == []
    assert held(cache, b) == [7]


def test_batched_reserve_handles_different_fill_levels():
    cache = make_cache(window=3, sink=1, slots=2)
    a, b = cache.allocate(), cache.allocate()
    write_tokens(cache, a, range(5))  # a is wrapped, b is empty
    labels = torch.tensor([[5, 6], [0, 1]])
    index = cache.reserve([a, b], labels)
    kv = labels[..., None, None].float()  # (B, T, H, D)
    for layer in range(2):
        cache.write(layer, [a, b], index, kv, kv)
    assert held(cache, a) == [0, 4, 5, 6]
    assert held(cache, b) == [0, 1]


def test_rewind_rewrites_the_same_positions_and_spares_the_sink():
    cache = make_cache(window=4, sink=2)
    slot = cache.allocate()
    write_tokens(cache, slot, range(8))
    cache.rewind([slot], 3)
    assert held(cache, slot) == [0, 1, 4]
    write_tokens(cache, slot, [50, 60, 70])  # recache: same labels' slots, new content
    assert held(cache, slot) == [0, 1, 4, 50, 60, 70]
    cache.rewind([slot], 100)  # never into the sink
    assert held(cache, slot) == [0, 1]


def test_clear_keeps_sink_on_request():
    cache = make_cache(window=4, sink=2)
    slot = cache.allocate()
    write_tokens(cache, slot, range(6))
    cache.clear([slot], keep_sink=True)
    assert held(cache, slot) == [0, 1]
    cache.clear([slot], keep_sink=False)
    assert held(cache, slot) == []


def test_write_larger_than_window_is_refused():
    cache = make_cache(window=2, sink=0)
    slot = cache.allocate()
    with pytest.raises(ValueError):
        cache.reserve([slot], torch.tensor([[0, 1, 2]]))


def test_mask_matches_offline_visibility():
    """What a query sees in the cache equals the offline sliding-window + sink mask."""
    window, sink, n = 3, 2, 12
    cache = make_cache(window=window + 1, sink=sink)  # one extra entry: writes of 1 token
    slot = cache.allocate()
    full = offline_mask(torch.arange(n)[None], window=window, sink=sink)[0, 0]  # (T, T)
    for p in range(n):
        write_tokens(cache, slot, [p])
        mask = cache.mask([slot], torch.tensor([[p]]), window=window)[0, 0, 0]
        k, _ = cache.read(0, [slot])
        seen = sorted(int(k[0, i, 0, 0]) for i in range(cache.capacity) if mask[i])
        assert seen == torch.nonzero(full[p]).flatten().tolist()


def test_slot_allocator_rejects_double_free():
    slots = SlotAllocator(2)
    s = slots.allocate()
    slots.free(s)
    with pytest.raises(ValueError):
        slots.free(s)
