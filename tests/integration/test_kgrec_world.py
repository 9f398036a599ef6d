"""The second paper's claim on a world built for it: target items are tied to the
source items only through the knowledge graph (both link to entities that are `about`
a shared topic entity), and no training user is active in both domains — every
overlapping user is held out. Nothing but the graph can carry a zero-shot user's
source taste to the target domain: KGE must beat Base there."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kg.graph import KnowledgeGraph
from trainer.data.base import Dataset, Interaction, Item
from trainer.data.scenario import Scenario, ScenarioConfig, build_scenario
from trainer.evaluate import evaluate
from trainer.kgrec.scorers import KGE, Base

pytestmark = pytest.mark.integration

TOPICS = 8
ITEMS = {"books": 8, "movies": 24}  # per topic: the target is a sparse long tail


def kg_world(seed: int, users: int = 400, overlap: int = 80) -> Dataset:
    """Two domains of TOPICS × ITEMS[domain] items; each user likes one topic and picks
    6 of its items per active domain. Entities: one per item, one per topic; triples
    (item entity, about, topic entity). Target items have ~3 training records each, too
    few for an ID embedding alone."""
    rng = random.Random(seed)
    items: dict[str, Item] = {}
    entities = [f"topic{k}" for k in range(TOPICS)]
    triples, links = [], {}
    for domain, n in ITEMS.items():
        for k in range(TOPICS):
            for j in range(n):
                iid = f"{domain[0]}{k}-{j}"
                items[iid] = Item(iid, domain, iid)
                links[iid] = (len(entities),)
                triples.append((len(entities), 0, k))
                entities.append(f"item:{iid}")
    kg = KnowledgeGraph(tuple(entities), ("about",), np.array(triples), links)
    interactions = []
    for u in range(users):
        topic = rng.randrange(TOPICS)
        both = u < overlap
        domains = tuple(ITEMS) if both else (rng.choice(tuple(ITEMS)),)
        for domain in domains:
            for j in rng.sample(range(ITEMS[domain]), 6):
                iid = f"{domain[0]}{topic}-{j}"
                ts = float(len(interactions))
                interactions.append(Interaction(f"u{u}", iid, domain, 5.0, ts))
    return Dataset(f"kg-world-{seed}", items, interactions, kg=kg)


def scenario(seed: int) -> Scenario:
    # every overlapping user held out (test 90 %, validation 10 %): no training user
    # links the two domains, so an ID model cannot align them
    cfg = ScenarioConfig("books", "movies", min_item_positives=1, holdout_fraction=0.9,
                         valid_holdout_fraction=0.1, seed=seed)
    return build_scenario(kg_world(seed), cfg)


@pytest.mark.parametrize("seed", [0, 1])
def test_kge_beats_base_for_zero_shot_users(seed: int) -> None:
    sc = scenario(seed)
    assert sc.kg is not None and sc.buckets
    assert not {r.user_id for r in sc.train if r.domain == "books"} & {
        r.user_id for r in sc.train if r.domain == "movies"}
    hr = {}
    for cls in (Base, KGE):
        # small initial ID vectors: the entity half of eq. 5 speaks first
        scorer = cls(epochs=40, batch=128, init_std=0.01)
        scorer.fit(sc, seed)
        hr[cls.name] = evaluate(scorer, sc, seed=seed)["zero-shot"]["HR@10"]
    # a random ranking of 192 items hits ~10/192 = 0.05; ranking the user's topic first
    # (24 items, 6 positives) hits ~10/19 = 0.53. Measured: Base 0.05 / 0.05, KGE
    # 0.24 / 0.28 (seeds 0 / 1)
    assert hr["KGE"] > 3 * hr["Base"] and hr["KGE"] > hr["Base"] + 0.1, hr
