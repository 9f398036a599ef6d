"""The quality gate: candidate vs active version on the held-out slice of the stream.

Protocol (DESIGN.md, evaluation): for every held-out example, the positive item is
ranked against `n_negatives` items sampled from the same domain (without the
positive); HR@10 = share of positives ranked in the top 10, NDCG@10 = mean of
1/log2(rank + 2) over those. Both models are scored on the *same* candidate lists:
the item universe is the candidate's item table (it knows every item the active
version knows, plus new ones); an item unknown to a model scores -inf there, so an
active version that has never seen a new popular item is charged for it.

Negatives are drawn from a generator seeded by the example id, so a slice is
evaluated identically for both models and across gate runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from trainer.online.examples import Example

logger = logging.getLogger(__name__)

TOP_K = 10


class Scorer:
    """What the gate needs from a model: user vectors for examples and item vectors."""

    item_ids: list[str]
    items: np.ndarray  # float32 [n_items, dim], row i = item_ids[i]

    def user_embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Scores:
    hr10: float
    ndcg10: float
    n: int


@dataclass(frozen=True)
class GateDecision:
    decision: str  # published | rejected | skipped | initial
    reason: str
    candidate: Scores | None = None
    active: Scores | None = None
    active_version: str | None = None
    tolerance: float = 0.0
    candidate_kind: str | None = None  # model kinds (embedme | entitygraph): the gate
    active_kind: str | None = None  # compares any two, on the same slice

    @property
    def publish(self) -> bool:
        return self.decision != "rejected"

    @property
    def slice(self) -> int:
        """Held-out examples both were scored on (0 when the gate did not run)."""
        return self.candidate.n if self.candidate is not None else 0

    def to_json(self) -> dict[str, object]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "candidate": asdict(self.candidate) if self.candidate else None,
            "active": asdict(self.active) if self.active else None,
            "active_version": self.active_version,
            "tolerance": self.tolerance,
            "candidate_kind": self.candidate_kind,
            "active_kind": self.active_kind,
            "slice": self.slice,
        }


def _seed(example_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(example_id.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class EvalSet:
    """Candidate lists: column 0 is the positive, the rest sampled negatives (item ids)."""

    examples: list[Example]
    candidates: list[list[str]]


def build_eval_set(
    examples: Sequence[Example], item_ids: Sequence[str], item_domains: Sequence[str],
    n_negatives: int,
) -> EvalSet:
    """Sample negatives per example from its domain in the item universe."""
    by_domain: dict[str, list[str]] = {}
    for item, domain in zip(item_ids, item_domains, strict=True):
        by_domain.setdefault(domain, []).append(item)
    kept, lists = [], []
    for ex in examples:
        pool = by_domain.get(ex.domain, [])
        others = [i for i in pool if i != ex.item_id]
        if not others:
            continue  # nothing to rank against
        k = min(n_negatives, len(others))
        rng = np.random.default_rng(_seed(ex.example_id))
        picks = rng.choice(len(others), size=k, replace=False)
        kept.append(ex)
        lists.append([ex.item_id, *(others[int(j)] for j in picks)])
    return EvalSet(kept, lists)


def rank_scores(user: np.ndarray, candidates: Sequence[str], index: Mapping[str, int],
                items: np.ndarray) -> int:
    """0-based rank of candidates[0] among all candidates (ties count against it)."""
    rows = [index.get(c, -1) for c in candidates]
    if rows[0] < 0:
        return len(candidates) - 1  # the model does not know the positive: last
    known = np.array([r for r in rows if r >= 0], dtype=np.int64)
    scores = items[known] @ user
    pos = float(items[rows[0]] @ user)
    # known[0] is the positive itself: compare against the others only
    return int(np.sum(scores[1:] >= pos))


def evaluate(scorer: Scorer, evalset: EvalSet) -> Scores:
    if not evalset.examples:
        return Scores(0.0, 0.0, 0)
    users = scorer.user_embeddings(evalset.examples)
    index = {item: i for i, item in enumerate(scorer.item_ids)}
    hits, gains = 0.0, 0.0
    for u, cands in zip(users, evalset.candidates, strict=True):
        rank = rank_scores(u, cands, index, scorer.items)
        if rank < TOP_K:
            hits += 1.0
            gains += 1.0 / float(np.log2(rank + 2))
    n = len(evalset.examples)
    return Scores(hits / n, gains / n, n)


def decide(candidate: Scores, active: Scores, tolerance: float,
           active_version: str | None = None, kinds: tuple[str | None, str | None] = (None, None),
           ) -> GateDecision:
    """Publish unless the candidate is worse than the active version beyond tolerance."""
    worse = []
    if candidate.hr10 < active.hr10 - tolerance:
        worse.append(f"HR@10 {candidate.hr10:.4f} < {active.hr10:.4f} - {tolerance}")
    if candidate.ndcg10 < active.ndcg10 - tolerance:
        worse.append(f"NDCG@10 {candidate.ndcg10:.4f} < {active.ndcg10:.4f} - {tolerance}")
    if worse:
        return GateDecision("rejected", "; ".join(worse), candidate, active, active_version,
                            tolerance, *kinds)
    return GateDecision("published", f"within tolerance {tolerance}", candidate, active,
                        active_version, tolerance, *kinds)


def run_gate(
    candidate: Scorer, active: Scorer | None, holdout: Sequence[Example], *,
    item_domains: Sequence[str], n_negatives: int, tolerance: float, min_examples: int,
    active_version: str | None = None, candidate_kind: str | None = None,
    active_kind: str | None = None,
) -> GateDecision:
    """The whole gate: no active version → initial; too small a slice → skipped."""
    kinds = (candidate_kind, active_kind)
    if active is None:
        return GateDecision("initial", "no active version", active_version=None,
                            tolerance=tolerance, candidate_kind=candidate_kind)
    evalset = build_eval_set(holdout, candidate.item_ids, item_domains, n_negatives)
    if len(evalset.examples) < max(1, min_examples):
        return GateDecision(
            "skipped", f"held-out slice has {len(evalset.examples)} < {min_examples} examples",
            active_version=active_version, tolerance=tolerance, candidate_kind=candidate_kind,
            active_kind=active_kind,
        )
    cand = evaluate(candidate, evalset)
    act = evaluate(active, evalset)
    decision = decide(cand, act, tolerance, active_version, kinds)
    logger.info("gate: %s (candidate %s HR@10 %.4f NDCG@10 %.4f, active %s %s HR@10 %.4f "
                "NDCG@10 %.4f, n=%d)", decision.decision, candidate_kind, cand.hr10,
                cand.ndcg10, active_kind, active_version, act.hr10, act.ndcg10, cand.n)
    return decision
