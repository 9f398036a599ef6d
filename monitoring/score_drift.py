"""Score-distribution drift of served recommendations (issue 8, drift (c)).

Serving feeds the dot-product scores of every recommendation it returns; scores
are kept per wall-clock window in a fixed-size uniform reservoir (memory does not
grow with traffic), and when a window closes its sample is compared with the
previous window's by PSI over the reference's quantile bins
(`monitoring.drift.histogram_psi`). Thresholds (docs/metrics.md): < 0.1 stable,
0.1-0.25 moderate, > 0.25 significant (alert MekbRecommendationScoreDrift).
A window with fewer than `min_samples` scores is not compared: PSI of a handful
of values is noise.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable

from monitoring.drift import histogram_psi


class Reservoir:
    """Uniform sample of at most `size` values of a stream (Vitter's algorithm R)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.seen = 0
        self.values: list[float] = []
        self._rng = rng

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.values[slot] = value


class ScoreDriftTracker:
    """Thread-safe: request handlers observe, the window roll happens inline."""

    def __init__(self, window_s: float = 300.0, *, sample_size: int = 5000,
                 min_samples: int = 200, seed: int = 0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self.sample_size = sample_size
        self.min_samples = min_samples
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._window_start: float | None = None
        self._current = Reservoir(sample_size, self._rng)
        self._previous: Reservoir | None = None

    def observe(self, scores: Iterable[float], now: float) -> float | None:
        """Add scores seen at wall time `now`; returns the PSI when this call closed a
        window that can be compared with the one before it, else None."""
        with self._lock:
            result = None
            if self._window_start is None:
                self._window_start = now
            elif now - self._window_start >= self.window_s:
                result = self._roll()
                self._window_start = now
            for score in scores:
                self._current.add(float(score))
            return result

    def _roll(self) -> float | None:
        closed, previous = self._current, self._previous
        self._current = Reservoir(self.sample_size, self._rng)
        if closed.seen < self.min_samples:
            return None  # too little traffic: keep the older reference
        self._previous = closed
        if previous is None:
            return None
        return histogram_psi(previous.values, closed.values)
