"""models/lru.py: the bounded least-recently-used map shared by prompt encoders and the VC upload fit."""

import threading

import pytest

from models.lru import LRU


def test_least_recently_used_goes_first():
    cache: LRU[int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    calls = []
    assert cache.get_or_compute("a", lambda: calls.append(1) or 9) == 1 and not calls
    assert cache.get_or_compute("d", lambda: 4) == 4 and cache.get("c") is None
    with pytest.raises(ValueError, match="at least one"):
        LRU(0)


def test_threads_never_see_more_than_size():
    cache: LRU[int] = LRU(8)

    def work(offset):
        for i in range(2000):
            cache.get_or_compute((offset + i) % 50, lambda i=i: i + 1)
            assert len(cache) <= 8

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 8
