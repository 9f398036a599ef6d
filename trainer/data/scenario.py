"""The cross-domain recommendation (CDR) scenario of MeKB-Rec (§4.1-4.2, appendix A).

1. Positives: rating >= `min_rating` (implicit feedback, rating None, is positive);
   only the two domains of the scenario; one record per (user, item).
2. Filters, repeated until stable: users with < `min_user_positives` positives, items
   with < `min_item_positives` positives (paper: 5 and 50).
3. 20 % (`holdout_fraction`) of the *overlapping* users (positives in both domains)
   are held out: all their target-domain records go to the test set (zero-shot users).
4. Every other record is split at random 8:1:1 into train / valid / test.
5. Test users are bucketed by their number of target-domain *training* records:
   zero-shot [0], few-shot [1, 10), multi-shot [10, inf) (paper Table 5).

MeKBs (trainer/data/mekb.py) are built from `train` only, so nothing of a valid/test
record reaches a user's input text (no leakage). Everything is deterministic for a seed.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

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
    source: str
    target: str
    min_rating: float = 4.0
    min_user_positives: int = 5
    min_item_positives: int = 50
    holdout_fraction: float = 0.2
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0


@dataclass
class Scenario:
    config: ScenarioConfig
    items: dict[str, Item]
    entities: dict[str, list[LinkedEntity]]
    train: list[Interaction]  # both domains
    valid: list[Interaction]  # target domain
    test: list[Interaction]  # target domain
    held_out_users: set[str]
    buckets: dict[str, str] = field(default_factory=dict)  # test/valid user -> bucket

    @property
    def source(self) -> str:
        return self.config.source

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
            "test_users_by_bucket": {b: by_bucket.get(b, 0) for b in BUCKETS},
        }


def _positives(dataset: Dataset, cfg: ScenarioConfig) -> list[Interaction]:
    seen: set[tuple[str, str]] = set()
    out = []
    for it in sorted(dataset.interactions, key=lambda i: (i.ts, i.user_id, i.item_id)):
        if it.domain not in (cfg.source, cfg.target):
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
    if cfg.source == cfg.target:
        raise DatasetError("source and target domains must differ")
    for d in (cfg.source, cfg.target):
        if d not in dataset.domains():
            raise DatasetError(f"domain {d!r} not in dataset (has {dataset.domains()})")
    if abs(sum(cfg.split) - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must sum to 1, got {cfg.split}")
    rng = random.Random(cfg.seed)
    records = _filter(_positives(dataset, cfg), cfg)
    if not any(r.domain == cfg.target for r in records):
        raise DatasetError("no target-domain positives survive the filters")
    domains_of: dict[str, set[str]] = defaultdict(set)
    for r in records:
        domains_of[r.user_id].add(r.domain)
    overlapping = sorted(u for u, ds in domains_of.items() if len(ds) == 2)
    rng.shuffle(overlapping)
    held = set(overlapping[: round(cfg.holdout_fraction * len(overlapping))])
    train: list[Interaction] = []
    valid: list[Interaction] = []
    test: list[Interaction] = []
    rest: list[Interaction] = []
    for r in records:
        if r.user_id in held and r.domain == cfg.target:
            test.append(r)
        else:
            rest.append(r)
    rng.shuffle(rest)
    n_train = int(round(cfg.split[0] * len(rest)))
    n_valid = int(round(cfg.split[1] * len(rest)))
    train = rest[:n_train]
    valid = [r for r in rest[n_train : n_train + n_valid] if r.domain == cfg.target]
    test += [r for r in rest[n_train + n_valid :] if r.domain == cfg.target]
    kept_items = {r.item_id for r in records}
    target_train = Counter(r.user_id for r in train if r.domain == cfg.target)
    buckets = {
        u: bucket_of(target_train.get(u, 0)) for u in {r.user_id for r in test + valid}
    }
    scenario = Scenario(
        cfg, {i: dataset.items[i] for i in sorted(kept_items)},
        {i: dataset.entities.get(i, []) for i in sorted(kept_items)},
        sorted(train, key=lambda r: (r.ts, r.user_id, r.item_id)), valid, test, held, buckets,
    )
    logger.info("scenario %s -> %s: %s", cfg.source, cfg.target, scenario.stats())
    return scenario
