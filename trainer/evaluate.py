"""Evaluation of MeKB-Rec §4.2 / Table 1 and Table 5, and of the second paper's
multi-domain protocol, one harness for every method.

For every valid/test record (user, target-domain positive):
- sampled: the positive plus `n_negatives` (999) items drawn uniformly from the target
  domain's items the user has no positive record with (train, valid or test); when the
  domain has fewer such items, all of them are used (then it equals full ranking);
- full: the positive against every target item the user has no positive record with
  (the "filtered" setting of the second paper: the user's other known positives are
  removed from the ranking, never counted as competitors).
HR@10 = rank < 10; NDCG@10 = 1/log2(rank + 2) if rank < 10 (rank 0 = first); filtered
MRR = 1/(rank + 1) and Hit@100 = rank < 100 over the full ranking. Ties count half (a
constant scorer gets the expected random rank, never a free hit).

Results are reported overall and per bucket (zero/few/multi-shot), as the mean and
standard deviation over seeds; every seed rebuilds the scenario (split, held-out users),
retrains the method and redraws the negatives.

Protocols (`run_experiment`): "mekb-rec" = one scenario (source(s) -> target), buckets
by target activity; "multidomain" (the second paper) = every domain in turn the target,
all others the sources, zero-shot users of each. Hyper-parameters: every method with a
`search_space` is fitted on the same number of configurations (`tune_budget`) and the
one with the best validation score (default: zero-shot HR@10 of the validation split's
held-out users) is tested; the choice and every trial are in the run record.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainer.data.base import Dataset
from trainer.data.scenario import BUCKETS, Scenario, ScenarioConfig, build_scenario

logger = logging.getLogger(__name__)

K = 10
HIT_AT = 100
METRICS = ("HR@10", "NDCG@10", "HR@10_full", "NDCG@10_full", "MRR", "Hit@100")


class Scorer(Protocol):
    """A method under evaluation: trained on a scenario, scores target items.

    A method may declare `search_space: dict[str, list]` (constructor keyword ->
    candidate values): the harness then tunes it on the validation split."""

    name: str

    def fit(self, scenario: Scenario, seed: int) -> None: ...

    def score(self, users: Sequence[str]) -> np.ndarray:
        """[len(users), len(scenario.target_items())] scores (higher = better)."""
        ...


@dataclass(frozen=True)
class MethodOptions:
    """Harness-wide settings (`mekb evaluate` flags) a method factory may read."""

    epochs: int = 3  # EmbedMe epochs
    batch_users: int = 32
    max_tokens: int = 64
    freeze_layers: int = 4  # MeKB-Rec only
    id_dim: int = 64
    id_epochs: int = 20  # ID baselines
    progress: bool = False


# Every method by command-line name: (table name, "module:attribute"). The attribute is
# a Scorer class (called with the search-space keywords) or a function
# `(MethodOptions, **keywords) -> Scorer`. Imported only when chosen.
METHODS: dict[str, tuple[str, str]] = {
    "popularity": ("Popularity", "trainer.baselines:popularity"),
    "youtubednn": ("YoutubeDNN (target only)", "trainer.baselines:youtubednn"),
    "emcdr": ("EMCDR", "trainer.baselines:emcdr"),
    "cmf": ("CMF", "trainer.baselines:cmf"),
    "noplm": ("w/o PLM", "trainer.baselines:noplm"),
    "mekb": ("MeKB-Rec", "trainer.baselines:mekb"),
    # the second paper (trainer/kgrec)
    "smf": ("SMF (BPR)", "trainer.kgrec.scorers:SMF"),
    "base": ("Base", "trainer.kgrec.scorers:Base"),
    "kge": ("KGE", "trainer.kgrec.scorers:KGE"),
    "multd": ("MultD", "trainer.kgrec.scorers:MultD"),
    "multd-kge": ("MultD KGE", "trainer.kgrec.scorers:MultDKGE"),
    "multd-gnn": ("MultD GNN", "trainer.kgrec.scorers:MultDGNN"),
    "multd-kge-gnn": ("MultD KGE+GNN", "trainer.kgrec.scorers:MultDKGEGNN"),
    # both papers joined (trainer/entitygraph)
    "entitygraph": ("EntityGraph", "trainer.entitygraph.scorer:EntityGraphScorer"),
    "entitygraph-target": ("EntityGraph (target only)",
                           "trainer.entitygraph.scorer:EntityGraphTargetOnly"),
    # zero-shot users through EMCDR's target side (trainer/entitygraph/mapped.py)
    "entitygraph-mf": ("EntityGraph+MF (hybrid)", "trainer.entitygraph.mapped:EntityGraphMF"),
}


def method_factory(short: str, options: MethodOptions | None = None) -> Callable[..., Scorer]:
    """`factory(**search-space keywords) -> a fresh Scorer` of a registered method."""
    if short not in METHODS:
        raise KeyError(f"unknown method {short!r}: {', '.join(METHODS)}")
    module, _, attr = METHODS[short][1].partition(":")
    obj = getattr(importlib.import_module(module), attr)
    opts = options or MethodOptions()
    if isinstance(obj, type):
        return obj

    def make(**params: Any) -> Scorer:
        return obj(opts, **params)

    return make


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
                full = _rank(row[pos], row[candidates])
                hrf, ndf = _hit_ndcg(full)
                values = (hr, nd, hrf, ndf, 1.0 / (full + 1.0), float(full < HIT_AT))
                for key in ("all", bucket):
                    acc = sums[key]
                    for m, v in zip(METRICS, values, strict=True):
                        acc[m] += v
                    acc["n"] += 1
    out: dict[str, dict[str, float]] = {}
    for key, acc in sums.items():
        n = acc["n"]
        out[key] = {m: acc[m] / n for m in METRICS} | {"n": n}
    return out


# -- protocols and tuning -------------------------------------------------------------
PROTOCOLS = ("mekb-rec", "multidomain")
DEFAULT_CRITERION = "zero-shot:HR@10"


@dataclass
class RunRecord:
    method: str
    seed: int
    metrics: dict[str, dict[str, float]]  # test split
    fit_seconds: float  # of the chosen configuration
    protocol: str = "mekb-rec"
    target: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # chosen on validation
    valid: dict[str, dict[str, float]] = field(default_factory=dict)  # chosen config's
    trials: list[dict[str, Any]] = field(default_factory=list)  # every configuration tried

    def key(self) -> tuple[str, str, str, int]:
        return (self.protocol, self.target, self.method, self.seed)


def configurations(space: dict[str, list[Any]], budget: int, seed: int) -> list[dict[str, Any]]:
    """`budget` configurations of the grid `space`: the first value of every list first,
    then distinct grid points drawn at random (seeded); the whole grid when smaller."""
    if not space or budget <= 1:
        return [{k: v[0] for k, v in space.items()}] if space and budget >= 1 else [{}]
    names = sorted(space)
    grid = [dict(zip(names, vals, strict=True))
            for vals in itertools.product(*(space[n] for n in names))]
    first = {n: space[n][0] for n in names}
    rest = [g for g in grid if g != first]
    random.Random(seed).shuffle(rest)
    return [first, *rest[: budget - 1]]


def criterion_value(metrics: dict[str, dict[str, float]], criterion: str) -> float:
    """`bucket:metric` of validation metrics; falls back to "all" when the bucket is
    empty (e.g. no zero-shot validation user survived the filters)."""
    bucket, _, metric = criterion.partition(":")
    vals = metrics.get(bucket) or metrics.get("all") or {}
    return float(vals.get(metric, float("-inf")))


def fit_tuned(
    factory: Callable[..., Scorer], scenario: Scenario, seed: int, *, budget: int,
    criterion: str = DEFAULT_CRITERION, n_negatives: int = 999,
) -> tuple[Scorer, dict[str, Any], float, dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Fit each of `budget` configurations on train, score on valid, keep the best:
    (scorer, params, fit seconds, its validation metrics, every trial)."""
    probe = factory()
    space: dict[str, list[Any]] = dict(getattr(probe, "search_space", None) or {})
    configs = configurations(space, budget, seed) if budget > 0 else [{}]
    best: tuple[float, Scorer, dict[str, Any], float, dict[str, dict[str, float]]] | None = None
    trials = []
    for n, params in enumerate(configs):
        scorer = probe if n == 0 and not params else factory(**params)
        t0 = time.perf_counter()
        scorer.fit(scenario, seed)
        fit_s = time.perf_counter() - t0
        if budget <= 0:
            return scorer, params, fit_s, {}, []
        valid = evaluate(scorer, scenario, seed=seed, n_negatives=n_negatives, split="valid")
        value = criterion_value(valid, criterion)
        trials.append({"params": params, criterion: value, "fit_seconds": round(fit_s, 2)})
        logger.info("%s %s: valid %s = %.4f", scorer.name, params, criterion, value)
        if best is None or value > best[0]:
            best = (value, scorer, params, fit_s, valid)
    assert best is not None
    return best[1], best[2], best[3], best[4], trials


def _scenarios(dataset: Dataset, cfg: ScenarioConfig, protocol: str, seed: int,
               domains: Sequence[str] | None) -> list[tuple[str, ScenarioConfig]]:
    if protocol == "mekb-rec":
        return [(cfg.target, replace(cfg, seed=seed))]
    if protocol != "multidomain":
        raise ValueError(f"unknown protocol {protocol!r}: {', '.join(PROTOCOLS)}")
    names = list(domains or dataset.domains())
    if len(names) < 2:
        raise ValueError("the multi-domain protocol needs at least two domains")
    return [(d, replace(cfg, source=tuple(n for n in names if n != d), target=d, seed=seed))
            for d in names]


def run_experiment(
    dataset: Dataset,
    scenario_config: ScenarioConfig,
    methods: dict[str, Callable[..., Scorer]],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    n_negatives: int = 999,
    out_jsonl: Path | None = None,
    protocol: str = "mekb-rec",
    domains: Sequence[str] | None = None,
    tune_budget: int = 0,
    criterion: str = DEFAULT_CRITERION,
) -> list[RunRecord]:
    """Every method × seed (× target domain under "multidomain"): build the scenario with
    that seed, fit (tuned on valid when `tune_budget` > 0), evaluate on test. Records are
    appended to `out_jsonl` as they finish (a long run can be inspected/resumed)."""
    done: set[tuple[str, str, str, int]] = set()
    records: list[RunRecord] = []
    if out_jsonl is not None and out_jsonl.exists():
        for line in out_jsonl.read_text().splitlines():
            rec = RunRecord(**json.loads(line))
            records.append(rec)
            done.add(rec.key())
    for seed in seeds:
        for target, cfg in _scenarios(dataset, scenario_config, protocol, seed, domains):
            todo = [n for n in methods if (protocol, target, n, seed) not in done]
            if not todo:
                continue
            scenario = build_scenario(dataset, cfg)
            for name in todo:
                scorer, params, fit_s, valid, trials = fit_tuned(
                    methods[name], scenario, seed, budget=tune_budget, criterion=criterion,
                    n_negatives=n_negatives)
                metrics = evaluate(scorer, scenario, seed=seed, n_negatives=n_negatives)
                rec = RunRecord(name, seed, metrics, fit_s, protocol, target, params, valid,
                                trials)
                records.append(rec)
                logger.info("%s %s seed %d: %s (fit %.0fs)", name, target, seed,
                            metrics.get("all"), fit_s)
                if out_jsonl is not None:
                    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
                    with open(out_jsonl, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(rec.__dict__) + "\n")
    return records


# -- tables ---------------------------------------------------------------------------
Agg = dict[str, dict[str, dict[str, tuple[float, float]]]]


def aggregate(records: Sequence[RunRecord]) -> Agg:
    """{method: {bucket: {metric: (mean, std over seeds)}}} (+ "n" = mean count)."""
    acc: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for rec in records:
        for bucket, vals in rec.metrics.items():
            for metric, v in vals.items():
                acc[rec.method][bucket][metric].append(float(v))
    out: Agg = {}
    for method, buckets in acc.items():
        out[method] = {}
        for bucket, metrics in buckets.items():
            out[method][bucket] = {
                m: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                for m, v in metrics.items()
            }
    return out


def markdown_tables(records: Sequence[RunRecord], metric_pair: tuple[str, str] = (
        "HR@10", "NDCG@10"), *, tuned: bool = True) -> str:
    """Table 1 layout (overall) and Table 5 layout (per bucket), mean ± std; `tuned`:
    list the configurations chosen on validation below."""
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
    return "\n".join(lines + (_tuned_lines(records) if tuned else []))


def markdown_multidomain(records: Sequence[RunRecord], metric_pair: tuple[str, str] = (
        "MRR", "Hit@100"), bucket: str = "zero-shot", *, tuned: bool = True) -> str:
    """The second paper's layout: one column pair per target domain (+ their mean),
    `bucket` users of that domain, mean ± std over seeds."""
    a, b = metric_pair
    domains = sorted({r.target for r in records})
    methods = list(dict.fromkeys(r.method for r in records))
    by_domain = {d: aggregate([r for r in records if r.target == d]) for d in domains}
    lines = [f"{bucket} users of each target domain (seeds "
             f"{sorted({r.seed for r in records})}; mean ± std)", "",
             "| method | " + " | ".join(f"{d} {a} | {d} {b}" for d in domains)
             + f" | mean {a} | mean {b} |",
             "|---" * (3 + 2 * len(domains)) + "|"]
    for m in methods:
        cells, means_a, means_b = [], [], []
        for d in domains:
            v = by_domain[d].get(m, {}).get(bucket, {})
            cells += [_fmt(v.get(a)), _fmt(v.get(b))]
            if v.get(a) and v.get(b):
                means_a.append(v[a][0])
                means_b.append(v[b][0])
        full = len(means_a) == len(domains)
        cells += [f"{statistics.fmean(means_a):.4f}" if full else "–",
                  f"{statistics.fmean(means_b):.4f}" if full else "–"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    counts = []
    for d in domains:
        n = next(iter(by_domain[d].values()), {}).get(bucket, {}).get("n")
        counts.append(f"{d}: {n[0]:.0f}" if n else f"{d}: 0")
    lines += ["", f"Test records of {bucket} users (mean over seeds): " + ", ".join(counts)]
    return "\n".join(lines + (_tuned_lines(records) if tuned else []))


def _tuned_lines(records: Sequence[RunRecord]) -> list[str]:
    tuned: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.trials:
            where = f"{r.target} " if r.protocol == "multidomain" else ""
            tuned[r.method].append(f"{where}seed {r.seed}: {json.dumps(r.params)}")
    if not tuned:
        return []
    out = ["", "Chosen on validation:"]
    for m, choices in tuned.items():
        out.append(f"- {m}: " + "; ".join(choices))
    return out


def _fmt(v: tuple[float, float] | None) -> str:
    return "–" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"
