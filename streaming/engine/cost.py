"""Batch-size buckets and the step-cost model that admission control projects with.

Pure Python on purpose (no torch): the scheduler and its tests run without any model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


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


@dataclass
class _Estimate:
    """What is known of one batch size's step."""

    seconds: float  # exponential average of its steps
    baseline_s: float  # lowest average it has had (a quiet device: warm-up, or a calm stretch)
    observed_at: float  # clock time of its last measurement


class StepCostModel:
    """Seconds per step by batch size: seeded by warm-up, then an exponential average of live steps.

    A model that pads to buckets is priced by bucket; one that does not, by its actual batch size.
    Sizes never measured are interpolated linearly between measured neighbours and extrapolated from
    the largest ones, which is conservative for models whose batch cost grows sublinearly.

    Estimates age. A size is re-measured only when a batch of that size runs, and a size that admission
    refuses never runs: an average inflated by a transient (a burst that starved the worker of CPU or the
    GIL) would otherwise refuse that size for good. After ``fresh_s`` without a measurement an estimate
    relaxes towards its baseline with a half-life of ``half_life_s``, and :meth:`stale_sizes` names the
    sizes worth probing (stepping dummy sessions, :meth:`observe_probe`) before refusing on them.
    """

    def __init__(
        self,
        buckets: BatchBuckets,
        pads_to_bucket: bool = False,
        smoothing: float = 0.05,
        *,
        fresh_s: float = 5.0,
        half_life_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buckets = buckets
        self.pads_to_bucket = pads_to_bucket
        self.smoothing = smoothing
        self.fresh_s = fresh_s
        self.half_life_s = half_life_s
        self.clock = clock
        self._estimates: dict[int, _Estimate] = {}

    def _size(self, batch_size: int, padded_batch_size: int) -> int:
        return padded_batch_size if self.pads_to_bucket else batch_size

    def observe(self, batch_size: int, padded_batch_size: int, seconds: float) -> None:
        """Record one live step's duration (or a warm-up median)."""
        size, now = self._size(batch_size, padded_batch_size), self.clock()
        old = self._estimates.get(size)
        if old is None:
            self._estimates[size] = _Estimate(seconds, seconds, now)
            return
        # Average from the aged value: a step after a long pause continues from what the size costs now.
        average = self._aged(old, now)
        average += self.smoothing * (seconds - average)
        self._estimates[size] = _Estimate(average, min(old.baseline_s, average), now)

    def observe_probe(self, batch_size: int, seconds: float) -> None:
        """Replace a stale estimate with a fresh measurement of dummy sessions stepped just now."""
        size, now = self._size(batch_size, self.buckets.bucket(batch_size)), self.clock()
        old = self._estimates.get(size)
        baseline = seconds if old is None else min(old.baseline_s, seconds)
        self._estimates[size] = _Estimate(seconds, baseline, now)

    @property
    def calibrated(self) -> bool:
        """True once at least one batch size was measured."""
        return bool(self._estimates)

    def _aged(self, estimate: _Estimate, now: float) -> float:
        stale_for_s = now - estimate.observed_at - self.fresh_s
        if stale_for_s <= 0 or estimate.seconds <= estimate.baseline_s:
            return estimate.seconds
        weight = 0.5 ** (stale_for_s / self.half_life_s)
        return estimate.baseline_s + (estimate.seconds - estimate.baseline_s) * weight

    def measured(self) -> dict[int, float]:
        """Current (aged) seconds per step of every measured size."""
        now = self.clock()
        return {size: self._aged(e, now) for size, e in sorted(self._estimates.items())}

    def stale_sizes(self, num_sessions: int) -> list[int]:
        """Batch sizes the step cost of ``num_sessions`` rests on whose last measurement is old.

        Each size a batch of ``num_sessions`` splits into (its bucket when padding), or, when it was never
        measured, the measured neighbours it is interpolated from: what a probe should step.
        """
        now = self.clock()
        stale = []
        for batch in self.buckets.split(num_sessions) if num_sessions else []:
            size = self.buckets.bucket(batch) if self.pads_to_bucket else batch
            sizes = [size] if size in self._estimates else self._neighbours(size)
            for s in sizes:
                if now - self._estimates[s].observed_at > self.fresh_s and s not in stale:
                    stale.append(s)
        return stale

    def _neighbours(self, size: int) -> list[int]:
        known = sorted(self._estimates)
        lower = [b for b in known if b < size]
        upper = [b for b in known if b > size]
        if lower and upper:
            return [lower[-1], upper[0]]
        return known[:1] if upper else known[-2:]

    def step_seconds(self, batch_size: int) -> float:
        """Estimated duration of one step of ``batch_size`` sessions (0 before any measurement)."""
        if not self._estimates:
            return 0.0
        seconds = self.measured()
        size = self.buckets.bucket(batch_size) if self.pads_to_bucket else batch_size
        if size in seconds:
            return seconds[size]
        known = list(seconds)
        first, last = known[0], known[-1]
        if size < first:
            return seconds[first]
        if size > last:
            # Beyond what was measured, each extra session costs the average marginal cost seen so far
            # (the per-session average when only one size is known): no optimistic flattening.
            span = last - first
            slope = (seconds[last] - seconds[first]) / span if span else 0.0
            if slope <= 0:
                slope = seconds[last] / last
            return seconds[last] + slope * (size - last)
        lower = max(b for b in known if b < size)
        upper = min(b for b in known if b > size)
        s0, s1 = seconds[lower], seconds[upper]
        return s0 + (s1 - s0) * (size - lower) / (upper - lower)

    def seconds_per_chunk(self, num_sessions: int) -> float:
        """Compute time needed each chunk period to step ``num_sessions`` sessions."""
        return sum(self.step_seconds(b) for b in self.buckets.split(num_sessions)) if num_sessions else 0.0
