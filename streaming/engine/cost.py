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
        """Batch sizes when ``num_sessions`` are due at once: full batches, then the remainder."""
        full, rest = divmod(num_sessions, self.max_batch_size)
        return [self.max_batch_size] * full + ([rest] if rest else [])


class StepCostModel:
    """Seconds per step by batch size: seeded by warm-up, then an exponential average of live steps.

    A model that pads to buckets is priced by bucket; one that does not, by its actual batch size.
    Sizes never measured are interpolated linearly between measured neighbours and extrapolated from
    the largest ones, which is conservative for models whose batch cost grows sublinearly.
    """

    def __init__(self, buckets: BatchBuckets, pads_to_bucket: bool = False, smoothing: float = 0.05) -> None:
        self.buckets = buckets
        self.pads_to_bucket = pads_to_bucket
        self.smoothing = smoothing
        self._seconds: dict[int, float] = {}

    def observe(self, batch_size: int, padded_batch_size: int, seconds: float) -> None:
        """Record one step's duration."""
        size = padded_batch_size if self.pads_to_bucket else batch_size
        old = self._seconds.get(size)
        self._seconds[size] = seconds if old is None else old + self.smoothing * (seconds - old)

    @property
    def calibrated(self) -> bool:
        """True once at least one batch size was measured."""
        return bool(self._seconds)

    def step_seconds(self, batch_size: int) -> float:
        """Estimated duration of one step of ``batch_size`` sessions (0 before any measurement)."""
        if not self._seconds:
            return 0.0
        size = self.buckets.bucket(batch_size) if self.pads_to_bucket else batch_size
        if size in self._seconds:
            return self._seconds[size]
        known = sorted(self._seconds)
        first, last = known[0], known[-1]
        if size < first:
            return self._seconds[first]
        if size > last:
            # Beyond what was measured, each extra session costs the average marginal cost seen so far
            # (the per-session average when only one size is known): no optimistic flattening.
            span = last - first
            slope = (self._seconds[last] - self._seconds[first]) / span if span else 0.0
            if slope <= 0:
                slope = self._seconds[last] / last
            return self._seconds[last] + slope * (size - last)
        lower = max(b for b in known if b < size)
        upper = min(b for b in known if b > size)
        s0, s1 = self._seconds[lower], self._seconds[upper]
        return s0 + (s1 - s0) * (size - lower) / (upper - lower)

    def seconds_per_chunk(self, num_sessions: int) -> float:
        """Compute time needed each chunk period to step ``num_sessions`` sessions."""
        return sum(self.step_seconds(b) for b in self.buckets.split(num_sessions)) if num_sessions else 0.0
