"""Batch-size buckets and the step-cost model that admission control projects with.

Pure Python on purpose (no torch): the scheduler and its tests run without any model.
"""

from __future__ import annotations

import math


class BatchBuckets:
    """Batch sizes a model is stepped at: powers of two up to ``max_batch_size`` (and that size itself).

    A GPU model pads each batch to its bucket so it can replay one captured graph per bucket.
    """

    def __init__(self, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        sizes = [1 << i for i in range(int(math.log2(max_batch_size)) + 1)]
        if sizes[-1] != max_batch_size:
            sizes.append(max_batch_size)
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.max_batch_size = max_batch_size

    def bucket(self, num_sessions: int) -> int:
        """Smallest bucket that holds ``num_sessions`` (<= max_batch_size)."""
        if not 1 <= num_sessions <= self.max_batch_size:
            raise ValueError(f"batch of {num_sessions} is outside 1..{self.max_batch_size}")
        return next(s for s in self.sizes if s >= num_sessions)

    def split(self, num_sessions: int) -> list[int]:
        """How ``num_sessions`` due at once are stepped: full batches, then one bucketed remainder."""
        full, rest = divmod(num_sessions, self.max_batch_size)
        return [self.max_batch_size] * full + ([self.bucket(rest)] if rest else [])


class StepCostModel:
    """Seconds per step at each bucket: seeded by warm-up, then an exponential average of live steps.

    Buckets never measured are interpolated linearly between measured neighbours and extrapolated from
    the largest ones, which is conservative for models whose batch cost grows sublinearly.
    """

    def __init__(self, buckets: BatchBuckets, smoothing: float = 0.05) -> None:
        self.buckets = buckets
        self.smoothing = smoothing
        self._seconds: dict[int, float] = {}

    def observe(self, bucket: int, seconds: float) -> None:
        """Record one step's duration at ``bucket``."""
        old = self._seconds.get(bucket)
        self._seconds[bucket] = seconds if old is None else old + self.smoothing * (seconds - old)

    @property
    def calibrated(self) -> bool:
        """True once at least one bucket was measured."""
        return bool(self._seconds)

    def step_seconds(self, bucket: int) -> float:
        """Estimated duration of one step at ``bucket`` (0 before any measurement)."""
        if not self._seconds:
            return 0.0
        if bucket in self._seconds:
            return self._seconds[bucket]
        known = sorted(self._seconds)
        lower = [b for b in known if b < bucket]
        upper = [b for b in known if b > bucket]
        if lower and upper:
            b0, b1 = lower[-1], upper[0]
        elif len(known) == 1:
            return self._seconds[known[0]] * (bucket / known[0] if bucket > known[0] else 1.0)
        elif lower:
            b0, b1 = known[-2], known[-1]
        else:
            return self._seconds[known[0]]
        s0, s1 = self._seconds[b0], self._seconds[b1]
        return max(0.0, s0 + (s1 - s0) * (bucket - b0) / (b1 - b0))

    def seconds_per_chunk(self, num_sessions: int) -> float:
        """Compute time needed each chunk period to step ``num_sessions`` sessions."""
        return sum(self.step_seconds(b) for b in self.buckets.split(num_sessions)) if num_sessions else 0.0
