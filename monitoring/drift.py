"""Drift measures: entity-distribution drift, embedding drift between model versions,
score-distribution drift. Pure functions plus small windowed trackers.

Thresholds (docs/metrics.md, monitoring/rules/):
- PSI: < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant (alert).
- Jensen-Shannon divergence (base 2, in [0, 1]): > 0.2 alert.
- Embedding drift between consecutive versions on the probe users: mean cosine
  shift (1 - cos) > 0.3 or top-k overlap < 0.5 alert.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PSI_EPSILON = 1e-4


def _normalise(counts: Mapping[str, float], keys: Iterable[str], eps: float) -> np.ndarray:
    values = np.array([max(float(counts.get(k, 0.0)), 0.0) for k in keys], dtype=np.float64)
    total = values.sum()
    probs = values / total if total > 0 else np.full(len(values), 1.0 / max(len(values), 1))
    if eps > 0:
        probs = np.maximum(probs, eps)
        probs = probs / probs.sum()
    return probs


def psi(expected: Mapping[str, float], actual: Mapping[str, float]) -> float:
    """Population stability index Σ (a - e)·ln(a / e) over the union of categories.

    Empty categories are floored at PSI_EPSILON so a category appearing or vanishing
    counts as a large but finite shift.
    """
    keys = sorted(set(expected) | set(actual))
    if not keys:
        return 0.0
    e = _normalise(expected, keys, PSI_EPSILON)
    a = _normalise(actual, keys, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def jensen_shannon(p_counts: Mapping[str, float], q_counts: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence in bits: 0 for identical, 1 for disjoint distributions."""
    keys = sorted(set(p_counts) | set(q_counts))
    if not keys:
        return 0.0
    p = _normalise(p_counts, keys, 0.0)
    q = _normalise(q_counts, keys, 0.0)
    m = 0.5 * (p + q)

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / y[mask])))

    return max(0.0, min(1.0, 0.5 * kl(p, m) + 0.5 * kl(q, m)))


def histogram_psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """PSI of a numeric distribution, bins at the reference's quantiles."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([ref.min() - 0.5, ref.max() + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    ref_hist = np.histogram(ref, edges)[0]
    cur_hist = np.histogram(cur, edges)[0]
    as_counts = {str(i): float(c) for i, c in enumerate(ref_hist)}
    return psi(as_counts, {str(i): float(c) for i, c in enumerate(cur_hist)})


@dataclass(frozen=True)
class EmbeddingDrift:
    mean_cosine_shift: float  # mean of 1 - cos(old_u, new_u) over probe users
    topk_overlap: float  # mean |top-k(old) ∩ top-k(new)| / k over probe users


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def embedding_drift(
    old_users: np.ndarray,
    new_users: np.ndarray,
    old_items: np.ndarray,
    new_items: np.ndarray,
    k: int = 10,
) -> EmbeddingDrift:
    """Drift between two model versions on the same probe users and the same items.

    Rows of old_items/new_items must describe the same item ids in the same order.
    The cosine shift is only meaningful when both versions share an embedding space
    (a version fine-tuned from its parent); the top-k overlap is meaningful always.
    """
    if old_users.shape[0] != new_users.shape[0] or old_items.shape[0] != new_items.shape[0]:
        raise ValueError("old and new must cover the same users and the same items")
    if old_users.shape[0] == 0:
        return EmbeddingDrift(0.0, 1.0)
    if old_users.shape[1] == new_users.shape[1]:
        cos = np.sum(_unit(old_users) * _unit(new_users), axis=1)
        shift = float(np.mean(1.0 - cos))
    else:
        shift = float("nan")
    k = min(k, old_items.shape[0])
    old_top = np.argsort(-(old_users @ old_items.T), axis=1)[:, :k]
    new_top = np.argsort(-(new_users @ new_items.T), axis=1)[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(old_top, new_top, strict=True)]
    return EmbeddingDrift(shift, float(np.mean(overlap)))


class WindowedEntityDistribution:
    """Entity distribution of the users updated in fixed event-time windows.

    Each user counts once per window with the entities of their latest MeKB in it,
    i.e. the document frequency among that window's active users. Records arrive
    out of event-time order across partitions, so a window closes only when the
    watermark (highest event time seen minus `lateness_s`) passes its end; records
    for an already closed window are counted in `late` and ignored. `observe`
    returns (psi, js) for each window it closed, against the window before it.
    """

    def __init__(self, window_s: float, lateness_s: float | None = None) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self.lateness_s = window_s if lateness_s is None else lateness_s
        self.late = 0
        self._open: dict[int, dict[str, tuple[str, ...]]] = {}
        self._closed_up_to: int | None = None  # windows with index < this are closed
        self._previous: Counter[str] | None = None
        self._max_ts = -math.inf

    def observe(
        self, user_id: str, entities: Sequence[str], ts: float
    ) -> list[tuple[float, float]]:
        index = math.floor(ts / self.window_s)
        if self._closed_up_to is not None and index < self._closed_up_to:
            self.late += 1
        else:
            self._open.setdefault(index, {})[user_id] = tuple(entities)
        self._max_ts = max(self._max_ts, ts)
        watermark = self._max_ts - self.lateness_s
        results = []
        for idx in sorted(self._open):
            if (idx + 1) * self.window_s > watermark:
                break
            current: Counter[str] = Counter()
            for ents in self._open.pop(idx).values():
                current.update(set(ents))
            self._closed_up_to = idx + 1
            previous, self._previous = self._previous, current
            if previous and current:
                results.append((psi(previous, current), jensen_shannon(previous, current)))
        return results
