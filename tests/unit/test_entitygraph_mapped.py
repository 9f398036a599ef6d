"""EntityGraph+MF (trainer/entitygraph/mapped.py): users with target training records
are scored by EntityGraph as it is, zero-shot users by EMCDR's mapping of their
source-only EntityGraph vector against the target MF's items; EMCDR's mapping fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.baselines.mf import fit_mapping
from trainer.data.scenario import ScenarioConfig, build_scenario
from trainer.data.synthetic import WorldConfig, generate_world
from trainer.entitygraph.mapped import EntityGraphMF
from trainer.entitygraph.model import EntityGraphConfig
from trainer.entitygraph.scorer import EntityGraphScorer
from trainer.entitygraph.train import EntityGraphTrainConfig
from trainer.evaluate import evaluate, method_factory


def test_fit_mapping_learns_a_linear_relation() -> None:
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(200, 6, generator=gen)
    ys = xs @ torch.randn(6, 4, generator=gen) * 0.5
    untrained = fit_mapping(xs, ys, seed=0, epochs=0)
    trained = fit_mapping(xs, ys, seed=0, epochs=1500)
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(untrained(xs), ys).item()
        after = torch.nn.functional.mse_loss(trained(xs), ys).item()
    assert after < 0.05 * before


@pytest.fixture(scope="module")
def fitted() -> tuple[EntityGraphMF, object]:
    world = generate_world(WorldConfig(seed=0, users=80, items_per_domain=30))
    sc = build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=2))
    scorer = EntityGraphMF(model=EntityGraphConfig(dim=8, hidden=16, pretrained=False),
                           training=EntityGraphTrainConfig(epochs=2, batch_users=16,
                                                           progress=False),
                           mf_epochs=3, map_epochs=20)
    scorer.fit(sc, 0)
    return scorer, sc


def test_warm_users_are_entitygraph_and_zero_shot_users_the_mapped_mf(fitted) -> None:
    scorer, sc = fitted
    users = sorted(sc.buckets)
    warm = [u for u in users if sc.buckets[u] != "zero-shot"]
    cold = [u for u in users if sc.buckets[u] == "zero-shot"]
    assert warm and cold
    scores = scorer.score(users)
    plain = EntityGraphScorer.score(scorer, users)  # the same model, EntityGraph's head
    target = set(sc.target_items())
    for j, u in enumerate(users):
        if u in warm:
            np.testing.assert_array_equal(scores[j], plain[j])
        else:
            with torch.no_grad():
                own = scorer.mapping(scorer.source_only_vectors([u], target))
            np.testing.assert_allclose(scores[j], (own @ scorer.cold_item.t()).numpy()[0],
                                       rtol=1e-5, atol=1e-6)
            assert not np.allclose(scores[j], plain[j])


def test_source_only_vectors_hide_the_target_items(fitted) -> None:
    scorer, sc = fitted
    target = set(sc.target_items())
    overlapping = next(u for u, m in scorer.index.users.items()
                       if any(i in target for i in m.items)
                       and any(i not in target for i in m.items))
    zero_shot = next(u for u in sorted(sc.buckets) if sc.buckets[u] == "zero-shot")
    full = scorer.embed([overlapping, zero_shot])
    hidden = scorer.source_only_vectors([overlapping, zero_shot], target)
    assert not torch.allclose(hidden[0], full[0])  # its target items left the MeKB
    torch.testing.assert_close(hidden[1], full[1])  # nothing of the target to hide


def test_the_harness_runs_it_by_name(fitted) -> None:
    scorer, sc = fitted
    assert method_factory("entitygraph-mf") is EntityGraphMF
    metrics = evaluate(scorer, sc, seed=0, split="test")
    assert metrics["zero-shot"]["n"] > 0
    assert 0.0 <= metrics["zero-shot"]["HR@10"] <= 1.0
