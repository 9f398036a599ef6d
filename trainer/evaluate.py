"""Evaluation of MeKB-Rec §4.2 / Table 1 and Table 5, one harness for every method.

For every test record (user, target-domain positive):
- sampled: the positive plus `n_negatives` (999) items drawn uniformly from the target
  domain's items the user has no positive record with (train, valid or test); when the
  domain has fewer such items, all of them are used (then it equals full ranking);
- full: the positive against every target item the user has no positive record with.
HR@10 = rank < 10; NDCG@10 = 1/log2(rank + 2) if rank < 10 (rank 0 = first). Ties
count half (a constant scorer gets the expected random rank, never a free hit).

Results are reported overall and per bucket (zero/few/multi-shot), as the mean and
standard deviation over seeds; every seed rebuilds the scenario (split, held-out users),
retrains the method and redraws the negatives.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from trainer.data.base import Dataset
from trainer.data.scenario import BUCKETS, Scenario, ScenarioConfig, build_scenario

logger = logging.getLogger(__name__)

K = 10
METRICS = ("HR@10", "NDCG@10", "HR@10_full", "NDCG@10_full")


class Scorer(Protocol):
    """A method under evaluation: trained on a scenario, scores target items."""

    name: str

    def fit(self, scenario: Scenario, seed: int) -> None: ...

    def score(self, users: Sequence[str]) -> np.ndarray:
        """[len(users), len(scenario.target_items())] scores (higher = better)."""
        ...


def _rank(pos_score: float, neg_scores: np.ndarray) -> float:
    return float((neg_scores > pos_score).sum() + 0.5 * (neg_scores == pos_score).sum())


def _hit_ndcg(rank: float) -> tuple[float, float]:
    if rank < K:
        return 1.0, 1.0 / math.log2(rank + 2.0)
    return 0.0, 0.0


def evaluate(
    scorer: Scorer,
    scenario: Scenario,
    *,
    seed: int = 0,
    n_negatives: int = 999,
    split: str = "test",
    batch: int = 64,
) -> dict[str, dict[str, float]]:
    """{bucket or "all": {metric: mean, "n": count}} for a fitted scorer."""
    records = scenario.test if split == "test" else scenario.valid
    items = scenario.target_items()
    col = {iid: j for j, iid in enumerate(items)}
    known: dict[str, set[int]] = defaultdict(set)
    for r in scenario.train + scenario.valid + scenario.test:
        if r.item_id in col:
            known[r.user_id].add(col[r.item_id])
    rng = np.random.default_rng(seed)
    by_user: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r.item_id in col:
            by_user[r.user_id].append(col[r.item_id])
    users = sorted(by_user)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    n_items = len(items)
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        scores = np.asarray(scorer.score(chunk), dtype=np.float64)
        if scores.shape != (len(chunk), n_items):
            raise ValueError(f"{scorer.name}: scores shape {scores.shape}, "
                             f"expected {(len(chunk), n_items)}")
        for row, user in zip(scores, chunk, strict=True):
            allowed = np.ones(n_items, dtype=bool)
            allowed[list(known[user])] = False
            candidates = np.flatnonzero(allowed)
            bucket = scenario.buckets.get(user, "multi-shot")
            for pos in by_user[user]:
                if len(candidates) > n_negatives:
                    negs = rng.choice(candidates, n_negatives, replace=False)
                else:
                    negs = candidates
                hr, nd = _hit_ndcg(_rank(row[pos], row[negs]))
                hrf, ndf = _hit_ndcg(_rank(row[pos], row[candidates]))
                for key in ("all", bucket):
                    acc = sums[key]
                    acc["HR@10"] += hr
                    acc["NDCG@10"] += nd
                    acc["HR@10_full"] += hrf
                    acc["NDCG@10_full"] += ndf
                    acc["n"] += 1
    out: dict[str, dict[str, float]] = {}
    for key, acc in sums.items():
        n = acc["n"]
        out[key] = {m: acc[m] / n for m in METRICS} | {"n": n}
    return out


@dataclass
class RunRecord:
    method: str
    seed: int
    metrics: dict[str, dict[str, float]]
    fit_seconds: float


def run_experiment(
    dataset: Dataset,
    scenario_config: ScenarioConfig,
    methods: dict[str, Callable[[], Scorer]],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    n_negatives: int = 999,
    out_jsonl: Path | None = None,
) -> list[RunRecord]:
    """Every method × seed: build the scenario with that seed, fit, evaluate. Records
    are appended to `out_jsonl` as they finish (a long run can be inspected/resumed)."""
    from dataclasses import replace

    done: set[tuple[str, int]] = set()
    records: list[RunRecord] = []
    if out_jsonl is not None and out_jsonl.exists():
        for line in out_jsonl.read_text().splitlines():
            rec = RunRecord(**json.loads(line))
            records.append(rec)
            done.add((rec.method, rec.seed))
    for seed in seeds:
        scenario = build_scenario(dataset, replace(scenario_config, seed=seed))
        for name, factory in methods.items():
            if (name, seed) in done:
                continue
            scorer = factory()
            t0 = time.perf_counter()
            scorer.fit(scenario, seed)
            fit_s = time.perf_counter() - t0
            metrics = evaluate(scorer, scenario, seed=seed, n_negatives=n_negatives)
            rec = RunRecord(name, seed, metrics, fit_s)
            records.append(rec)
            logger.info("%s seed %d: %s (fit %.0fs)", name, seed, metrics.get("all"), fit_s)
            if out_jsonl is not None:
                out_jsonl.parent.mkdir(parents=True, exist_ok=True)
                with open(out_jsonl, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec.__dict__) + "\n")
    return records


def aggregate(records: Sequence[RunRecord]) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """{method: {bucket: {metric: (mean, std over seeds)}}} (+ "n" = mean count)."""
    acc: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for rec in records:
        for bucket, vals in rec.metrics.items():
            for metric, v in vals.items():
                acc[rec.method][bucket][metric].append(float(v))
    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for method, buckets in acc.items():
        out[method] = {}
        for bucket, metrics in buckets.items():
            out[method][bucket] = {
                m: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                for m, v in metrics.items()
            }
    return out


def markdown_tables(records: Sequence[RunRecord], metric_pair: tuple[str, str] = (
        "HR@10", "NDCG@10")) -> str:
    """Table 1 layout (overall) and Table 5 layout (per bucket), mean ± std."""
    agg = aggregate(records)
    seeds = sorted({r.seed for r in records})
    methods = list(dict.fromkeys(r.method for r in records))
    a, b = metric_pair
    per_method = {m: sorted({r.seed for r in records if r.method == m}) for m in methods}
    lines = [f"Overall (seeds {seeds}; mean ± std over each method's seeds)", "",
             f"| method | seeds | {a} | {b} |", "|---|---|---|---|"]
    for m in methods:
        v = agg[m].get("all", {})
        lines.append(f"| {m} | {len(per_method[m])} | {_fmt(v.get(a))} | {_fmt(v.get(b))} |")
    lines += ["", "Per bucket of target-domain training activity", ""]
    head = "| method | " + " | ".join(
        f"{bk} {a} | {bk} {b}" for bk in BUCKETS) + " |"
    lines += [head, "|---" * (1 + 2 * len(BUCKETS)) + "|"]
    counts = []
    for bk in BUCKETS:
        n = agg[methods[0]].get(bk, {}).get("n")
        counts.append(f"{bk}: {n[0]:.0f}" if n else f"{bk}: 0")
    for m in methods:
        cells = []
        for bk in BUCKETS:
            v = agg[m].get(bk, {})
            cells += [_fmt(v.get(a)), _fmt(v.get(b))]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Test records per bucket (mean over seeds): " + ", ".join(counts)]
    return "\n".join(lines)


def _fmt(v: tuple[float, float] | None) -> str:
    return "–" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"
