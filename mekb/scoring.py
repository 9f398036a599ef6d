"""MeKB scoring (MeKB-Rec §3.1): one implementation for streams, trainer and serving.

- Frequency aggregation with log smoothing above K*:
  s(k) = k for k <= K*, else K*·(1 + log(k / K*)).
- Interest IDF: idf(e) = log(N / df(e)), N users, df(e) users whose MeKB holds e.
- MeKBScore(u, e) = s(k_ue)·idf(e) / Σ_e' s(k_ue')·idf(e').
- EmbedMe input: entity titles by descending score, joined by [SEP], truncated to
  N tokens by the tokenizer.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

DEFAULT_K_STAR = 5.0
DEFAULT_MAX_TOKENS = 256
SEPARATOR = " [SEP] "


def smooth(k: float, k_star: float = DEFAULT_K_STAR) -> float:
    """s(k): linear up to K*, logarithmic above (keeps head entities from dominating)."""
    if k < 0:
        raise ValueError(f"frequency must be >= 0, got {k}")
    if k <= k_star:
        return k
    return k_star * (1.0 + math.log(k / k_star))


def idf(df: int, n_users: int) -> float:
    """log(N / df). An entity nobody holds (df = 0) or held by everyone scores 0."""
    if df <= 0 or n_users <= 0:
        return 0.0
    return math.log(max(n_users, df) / df)


@dataclass(frozen=True)
class ScoredEntity:
    entity_id: str
    score: float


def mekb_scores(
    counts: Mapping[str, float],
    df: Callable[[str], int] | Mapping[str, int],
    n_users: int,
    k_star: float = DEFAULT_K_STAR,
) -> list[ScoredEntity]:
    """MeKBScore of every entity of one user, best first (ties: by entity id).

    When every entity has idf 0 (e.g. a single user), the IDF factor carries no
    information and the scores fall back to normalised s(k), so the user still has
    an ordered MeKB instead of an empty one.
    """
    lookup = df.get if isinstance(df, Mapping) else df
    ranked = rank(counts, lambda e: idf(int(lookup(e) or 0), n_users), k_star)
    return [ScoredEntity(e, v) for e, v in ranked]


def rank(
    counts: Mapping[str, float], idf_of: Callable[[str], float], k_star: float = DEFAULT_K_STAR,
) -> list[tuple[str, float]]:
    """`mekb_scores` as (entity, score) pairs, with idf(e) supplied by the caller.

    The stream worker scores a full MeKB for every training example; with a memoised
    `idf_of` this is one dict lookup, one multiplication and one tuple per entity.
    Results are identical to `mekb_scores` (same summation order, exact negation).
    """
    log = math.log
    # Negated scores: one C-level tuple sort gives score descending, entity ascending;
    # s(k) inline (see `smooth`): a call per entity is most of the cost here.
    weighted = [
        (-((k if k <= k_star else k_star * (1.0 + log(k / k_star))) * idf_of(e)), e)
        for e, k in counts.items() if k > 0
    ]
    weighted.sort()
    # Summed in that order (score descending, id ascending): the total depends on the
    # MeKB alone, not on the order its entities were counted in, so RankMemo, which
    # keeps its weights in the same order, gets the same total bit for bit.
    total = -sum(map(itemgetter(0), weighted))
    if total <= 0:  # every idf is 0: fall back to s(k) alone
        weighted = sorted((-(k if k <= k_star else k_star * (1.0 + log(k / k_star))), e)
                          for e, k in counts.items() if k > 0)
        total = -sum(map(itemgetter(0), weighted))
    if total <= 0:
        return []
    return [(e, -v / total) for v, e in weighted]


class RankMemo:
    """`rank` for one MeKB that changes a few entities between calls, under one idf
    (the stream worker: a heavy user gets a training example every few events).

    Keeps each entity's weight s(k)·idf(e) with an output object, in (weight, id)
    order, and re-weighs only the entities marked `changed` since the last call;
    entities that left the MeKB must be `removed`. A re-weighed entity moves by
    bisection, so a call costs O(changes·log M) plus the normalisation instead of a
    sort of all M entities. Same weights, order (score descending, id ascending),
    total (summed in that order) and division as `rank`, so the scores are
    identical. The objects are reused: serialise a result before the next call
    changes their scores.
    """

    __slots__ = ("_entries", "_order", "_changed")

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, str, dict[str, object]]] = {}
        self._order: list[tuple[float, str, dict[str, object]]] = []  # sorted entries
        self._changed: set[str] | None = None  # None: weigh every entity next time

    def changed(self, entity_ids: Iterable[str]) -> None:
        if self._changed is not None:
            self._changed.update(entity_ids)

    def removed(self, entity_ids: Iterable[str]) -> None:
        for entity_id in entity_ids:
            self._drop(entity_id)

    def _drop(self, entity_id: str) -> None:
        entry = self._entries.pop(entity_id, None)
        if entry is not None:
            # Ids are unique, so the tuple compares equal only to itself (its object
            # is the same object): bisection lands on it without comparing objects.
            del self._order[bisect_left(self._order, entry)]

    def rank(
        self, counts: Mapping[str, float], idf_of: Callable[[str], float],
        make: Callable[[str, float], dict[str, object]], k_star: float = DEFAULT_K_STAR,
        limit: int = 0,
    ) -> list[dict[str, object]] | None:
        """The objects best first, each with its "score" set; `make(entity, k)` builds
        the object of a re-weighed entity. With `limit`, only the first `limit` (their
        scores still normalised over every entity). None when every idf is 0 (`rank`
        then falls back to s(k) alone)."""
        entries, order = self._entries, self._order
        if self._changed is None:
            entries.clear()
            for e, count in counts.items():
                if count > 0:
                    entries[e] = (-(smooth(count, k_star) * idf_of(e)), e, make(e, count))
            order[:] = sorted(entries.values())
        else:
            for e in self._changed:
                self._drop(e)
                k = counts.get(e)
                if k is not None and k > 0:
                    entry = entries[e] = (-(smooth(k, k_star) * idf_of(e)), e, make(e, k))
                    insort(order, entry)
        self._changed = set()
        total = -sum(map(itemgetter(0), order))
        if total <= 0:
            return None
        top = order[:limit] if limit else order
        for v, _, obj in top:
            obj["score"] = -v / total
        return [obj for _, _, obj in top]


def sequence_text(titles: Sequence[str], max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """Titles (already ordered by score) joined by [SEP].

    Every title plus its separator is at least two WordPiece tokens, so at most
    max_tokens // 2 titles can survive truncation; the tokenizer then truncates
    to exactly `max_tokens`.
    """
    return SEPARATOR.join(titles[: max(1, max_tokens // 2)])
