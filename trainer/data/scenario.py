"""The cross-domain recommendation (CDR) scenario of MeKB-Rec (§4.1-4.2, appendix A).

1. Positives: rating >= `min_rating` (implicit feedback, rating None, is positive);
   only the scenario's domains (one or more sources, one target); one record per
   (user, item).
2. Filters, repeated until stable: users with < `min_user_positives` positives, items
   with < `min_item_positives` positives (paper: 5 and 50).
3. 20 % (`holdout_fraction`) of the *overlapping* users (positives in the target and
   a source domain) are held out: all their target-domain records go to the test set
   (zero-shot test users). Another, disjoint `valid_holdout_fraction` of them go to
   the validation set the same way (zero-shot validation users: what tuning and early
   stopping for the product's bucket need).
4. Every other *target-domain* record is split at random 8:1:1 into train / valid /
   test. Every source-domain record goes to train: only target records are predicted,
   and a source record in valid/test would be used by no method while hiding ~20 % of
   a user's source history from their MeKB and source vector (the paper's appendix
   says "8:1:1" and "all their records into the test set" without saying what becomes
   of source records; we read it as the split of what is evaluated, the target).
5. Valid and test users are bucketed by their number of target-domain *training*
   records: zero-shot [0], few-shot [1, 10), multi-shot [10, inf) (paper Table 5).

MeKBs (trainer/data/mekb.py) are built from `train` only, so nothing of a valid/test
record reaches a user's input text (no leakage). The dataset's knowledge graph, when it
has one, comes restricted to the scenario's items and what lies within `kg_hops` of
them (`Scenario.kg`). Everything is
deterministic for a seed.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from kg.graph import KnowledgeGraph
from linker.base import LinkedEntity
from trainer.data.base import Dataset, DatasetError, Interaction, Item

logger = logging.getLogger(__name__)

BUCKETS = ("zero-shot", "few-shot", "multi-shot")


def bucket_of(n_target_train: int, few_max: int = 10) -> str:
    if n_target_train == 0:
        return "zero-shot"
    return "few-shot" if n_target_train < few_max else "multi-shot"


@dataclass(frozen=True)
class ScenarioConfig:
    source: str | tuple[str, ...]  # one domain, several ("a,b" or a tuple)
    target: str
    min_rating: float = 4.0
    min_user_positives: int = 5
    min_item_positives: int = 50
    holdout_fraction: float = 0.2
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    valid_holdout_fraction: float = 0.1
    # the dataset's graph within this many hops of the scenario's items (synthetic
    # kg-only world: item -> entity -> concept -> topic needs 3; ml-100k: all of it)
    kg_hops: int = 3

    @property
    def sources(self) -> tuple[str, ...]:
        names = self.source.split(",") if isinstance(self.source, str) else self.source
        return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


@dataclass
class Scenario:
    config: ScenarioConfig
    items: dict[str, Item]
    entities: dict[str, list[LinkedEntity]]
    train: list[Interaction]  # both domains
    valid: list[Interaction]  # target domain
    test: list[Interaction]  # target domain
    held_out_users: set[str]  # zero-shot test users
    buckets: dict[str, str] = field(default_factory=dict)  # test/valid user -> bucket
    valid_held_out_users: set[str] = field(default_factory=set)  # zero-shot validation users
    kg: KnowledgeGraph | None = None  # the dataset's graph around the scenario's items

    @property
    def sources(self) -> tuple[str, ...]:
        return self.config.sources

    @property
    def source(self) -> str:
        """The source domain ("a+b" when there are several: for display)."""
        return "+".join(self.config.sources)

    def source_items(self) -> list[str]:
        return sorted(i for i, it in self.items.items() if it.domain in self.sources)

    @property
    def target(self) -> str:
        return self.config.target

    def target_items(self) -> list[str]:
        return sorted(i for i, it in self.items.items() if it.domain == self.target)

    def train_by_user(self, domain: str | None = None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for it in self.train:
            if domain is None or it.domain == domain:
                out[it.user_id].append(it.item_id)
        return dict(out)

    def stats(self) -> dict[str, object]:
        users = {i.user_id for i in self.train} | {i.user_id for i in self.test}
        by_bucket = Counter(self.buckets[u] for u in {i.user_id for i in self.test})
        return {
            "source": self.source, "target": self.target, "users": len(users),
            "items": dict(Counter(it.domain for it in self.items.values())),
            "train": dict(Counter(i.domain for i in self.train)),
            "valid": len(self.valid), "test": len(self.test),
            "held_out_users": len(self.held_out_users),
            "valid_held_out_users": len(self.valid_held_out_users),
            "test_users_by_bucket": {b: by_bucket.get(b, 0) for b in BUCKETS},
        }


def _positives(dataset: Dataset, cfg: ScenarioConfig) -> list[Interaction]:
    seen: set[tuple[str, str]] = set()
    out = []
    for it in sorted(dataset.interactions, key=lambda i: (i.ts, i.user_id, i.item_id)):
        if it.domain != cfg.target and it.domain not in cfg.sources:
            continue
        if it.rating is not None and it.rating < cfg.min_rating:
            continue
        key = (it.user_id, it.item_id)
        if key in seen:
            continue
        seen.add(key)
        out.append(it)
    return out


def _filter(records: list[Interaction], cfg: ScenarioConfig) -> list[Interaction]:
    for _ in range(50):
        users = Counter(r.user_id for r in records)
        items = Counter(r.item_id for r in records)
        kept = [
            r for r in records
            if users[r.user_id] >= cfg.min_user_positives
            and items[r.item_id] >= cfg.min_item_positives
        ]
        if len(kept) == len(records):
            return kept
        records = kept
    return records


def build_scenario(dataset: Dataset, config: ScenarioConfig) -> Scenario:
    cfg = config
    if not cfg.sources:
        raise DatasetError("no source domain")
    if cfg.target in cfg.sources:
        raise DatasetError("source and target domains must differ")
    for d in (*cfg.sources, cfg.target):
        if d not in dataset.domains():
            raise DatasetError(f"domain {d!r} not in dataset (has {dataset.domains()})")
    if abs(sum(cfg.split) - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must sum to 1, got {cfg.split}")
    if cfg.holdout_fraction + cfg.valid_holdout_fraction > 1.0:
        raise DatasetError("holdout fractions of overlapping users exceed 1")
    rng = random.Random(cfg.seed)
    records = _filter(_positives(dataset, cfg), cfg)
    if not any(r.domain == cfg.target for r in records):
        raise DatasetError("no target-domain positives survive the filters")
    in_target: set[str] = set()
    in_source: set[str] = set()
    for r in records:
        (in_target if r.domain == cfg.target else in_source).add(r.user_id)
    overlapping = sorted(in_target & in_source)
    rng.shuffle(overlapping)
    n_test = round(cfg.holdout_fraction * len(overlapping))
    n_valid = round(cfg.valid_holdout_fraction * len(overlapping))
    held = set(overlapping[:n_test])
    valid_held = set(overlapping[n_test : n_test + n_valid])
    train: list[Interaction] = []
    valid: list[Interaction] = []
    test: list[Interaction] = []
    rest: list[Interaction] = []  # target records of the other users, to split 8:1:1
    for r in records:
        if r.domain != cfg.target:
            train.append(r)
        elif r.user_id in held:
            test.append(r)
        elif r.user_id in valid_held:
            valid.append(r)
        else:
            rest.append(r)
    rng.shuffle(rest)
    n_train = int(round(cfg.split[0] * len(rest)))
    n_valid_split = int(round(cfg.split[1] * len(rest)))
    train += rest[:n_train]
    valid += rest[n_train : n_train + n_valid_split]
    test += rest[n_train + n_valid_split :]
    kept_items = sorted({r.item_id for r in records})
    target_train = Counter(r.user_id for r in train if r.domain == cfg.target)
    buckets = {
        u: bucket_of(target_train.get(u, 0)) for u in {r.user_id for r in test + valid}
    }
    scenario = Scenario(
        cfg, {i: dataset.items[i] for i in kept_items},
        {i: dataset.entities.get(i, []) for i in kept_items},
        sorted(train, key=lambda r: (r.ts, r.user_id, r.item_id)), valid, test, held, buckets,
        valid_held,
        dataset.kg.restrict(kept_items, hops=cfg.kg_hops) if dataset.kg is not None else None,
    )
    logger.info("scenario %s -> %s: %s", scenario.source, cfg.target, scenario.stats())
    return scenario
