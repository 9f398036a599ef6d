"""The second paper's building blocks (trainer/kgrec/) against hand-computed values on
tiny inputs, and the harness methods end to end on a small scenario."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kg.graph import KnowledgeGraph
from trainer.data.scenario import Scenario, ScenarioConfig, build_scenario
from trainer.data.synthetic import WorldConfig, generate_world
from trainer.kgrec.base import KGRecConfig, margin_ranking_loss
from trainer.kgrec.bpr import bpr_loss
from trainer.kgrec.gnn import AttentionGNN, Neighbourhoods, additive_attention
from trainer.kgrec.interaction import KGItemEncoder
from trainer.kgrec.multidomain import DomainMLP
from trainer.kgrec.scorers import METHODS, SHORT, KGRecScorer
from trainer.kgrec.transe import TransE, corrupt, kg_margin_loss, transe_distance


def test_transe_distance_l1_l2() -> None:
    h, r, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, -1.0]])
    # h + r - t = (1, 3)
    assert transe_distance(h, r, t, p=1).item() == pytest.approx(4.0)
    assert transe_distance(h, r, t, p=2).item() == pytest.approx(math.sqrt(10.0))


def test_kg_margin_loss() -> None:
    pos, neg = torch.tensor([1.0, 3.0]), torch.tensor([2.5, 2.0])
    # max(0, 1 + 1 - 2.5) = 0, max(0, 1 + 3 - 2) = 2 -> mean 1
    assert kg_margin_loss(pos, neg, margin=1.0).item() == pytest.approx(1.0)


def test_transe_module_distance_and_corruption() -> None:
    model = TransE(n_entities=3, n_relations=1, dim=2, p=1)
    with torch.no_grad():
        model.entities.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [9, 9]]))
        model.relations.weight.copy_(torch.tensor([[1.0, 0.5]]))
    triples = torch.tensor([[0, 0, 1], [2, 0, 0]])
    # |0 + (1, .5) - (1, 1)|_1 = 0.5 ; |(.5, 0) + (1, .5) - 0|_1 = 2
    assert model.distance(triples).tolist() == pytest.approx([0.5, 2.0])
    gen = torch.Generator().manual_seed(0)
    many = torch.tensor([[0, 0, 1]]).repeat(200, 1)
    bad = corrupt(many, 3, gen)
    assert (bad[:, 1] == 0).all()  # the relation is never touched
    changed_head, changed_tail = bad[:, 0] != 0, bad[:, 2] != 1
    assert not (changed_head & changed_tail).any()  # one side at a time
    assert changed_head.any() and changed_tail.any()
    with torch.no_grad():
        model.entities.weight.mul_(10)
    model.renorm()
    assert model.entities.weight.norm(dim=1).max().item() <= 1.0 + 1e-6


def test_margin_ranking_and_bpr_losses() -> None:
    pos, neg = torch.tensor([1.0]), torch.tensor([[0.5, 2.0]])
    # max(0, 1 - 1 + .5) = .5, max(0, 1 - 1 + 2) = 2 -> mean 1.25
    assert margin_ranking_loss(pos, neg, margin=1.0).item() == pytest.approx(1.25)
    pos, neg = torch.tensor([2.0]), torch.tensor([[0.0, 2.0]])
    expected = (-math.log(1 / (1 + math.exp(-2.0))) + math.log(2.0)) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(expected)


def test_additive_attention_weights() -> None:
    w = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        w.weight.fill_(2.0)
    query = torch.tensor([[0.0], [1.0]])
    keys = torch.tensor([[[0.5], [-0.5], [9.0]], [[0.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    alpha = additive_attention(query, keys, mask, w)
    a, b = math.exp(2 * math.tanh(0.5)), math.exp(2 * math.tanh(-0.5))
    assert alpha[0].tolist() == pytest.approx([a / (a + b), b / (a + b), 0.0])
    assert alpha[0].sum().item() == pytest.approx(1.0)  # padding takes no weight
    assert alpha[1].tolist() == [0.0, 0.0, 0.0]  # nothing to attend to: zeros, not NaN


def test_gnn_starts_from_the_domain_and_averages_neighbours() -> None:
    torch.manual_seed(0)
    gnn = AttentionGNN(n_domains=2, dim=3, layers=2)
    nbr = torch.tensor([[[1.0, 2.0, 3.0], [7.0, 7.0, 7.0]], [[0.0, 0.0, 0.0]] * 2])
    keys = gnn.key(nbr)
    mask = torch.tensor([[True, False], [False, False]])
    out = gnn(torch.tensor([0, 1]), nbr, keys, mask)
    assert out[0].tolist() == pytest.approx([1.0, 2.0, 3.0])  # one neighbour: all weight
    assert out[1].tolist() == pytest.approx(gnn.start.weight[1].tolist())  # none: domain
    both = gnn(torch.tensor([0]), nbr[:1], keys[:1], torch.tensor([[True, True]]))
    assert 1.0 < both[0, 0].item() < 7.0  # a convex combination of the two


def test_neighbourhoods_slices_sampling_and_exclusion() -> None:
    users = np.array([0, 0, 0, 1, 0])
    domains = np.array([1, 0, 1, 0, 0])
    items = np.array([10, 11, 12, 13, 14])
    nb = Neighbourhoods.build(users, domains, items, n_users=3, n_domains=2)
    start, count = nb.of(torch.tensor([0, 1, 2]), None)
    assert count.tolist() == [4, 1, 0]
    rows, mask = nb.sample(start, count, 4, None)
    assert sorted(rows[0][mask[0]].tolist()) == [10, 11, 12, 14]
    assert rows[1][mask[1]].tolist() == [13] and not mask[2].any()
    start, count = nb.of(torch.tensor([0, 0]), torch.tensor([1, 0]))
    rows, mask = nb.sample(start, count, 2, None, exclude=torch.tensor([12, 99]))
    assert rows[0][mask[0]].tolist() == [10]  # domain 1 items, the positive hidden
    assert sorted(rows[1][mask[1]].tolist()) == [11, 14]
    gen = torch.Generator().manual_seed(0)
    rows, mask = nb.sample(*nb.of(torch.tensor([0] * 50), None), 2, gen)
    assert mask.all() and set(rows.flatten().tolist()) == {10, 11, 12, 14}


def test_domain_mlp_uses_each_rows_own_domain() -> None:
    torch.manual_seed(0)
    mlp = DomainMLP(n_domains=3, d_in=4, d_out=2, hidden=5)
    x = torch.randn(6, 4)
    domain = torch.tensor([0, 1, 2, 2, 1, 0])
    out = mlp(x, domain)
    for b in range(6):
        d = domain[b]
        h = torch.relu(x[b] @ mlp.w1[d] + mlp.b1[d])
        assert out[b].tolist() == pytest.approx((h @ mlp.w2[d] + mlp.b2[d]).tolist(), abs=1e-5)


def test_kg_item_encoder_averages_links_and_has_a_no_entity_vector() -> None:
    transe = TransE(n_entities=3, n_relations=1, dim=2)
    with torch.no_grad():
        transe.entities.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0],
                                                   [-1.0, -1.0]]))
    links = torch.tensor([[0, 1], [2, 3], [3, 3]])  # pad = 3
    enc = KGItemEncoder(2, links, transe)
    e = enc.entity_vectors(torch.tensor([0, 1, 2]))
    np.testing.assert_allclose(e.detach().numpy(), [[0.5, 0.5], [3.0, 3.0], [-1.0, -1.0]])
    assert enc(torch.zeros(3, 2), torch.tensor([0, 1, 2])).shape == (3, 2)


def test_config_rejects_gnn_without_multidomain() -> None:
    with pytest.raises(ValueError, match="multidomain"):
        KGRecConfig(gnn=True)


@pytest.fixture(scope="module")
def small() -> Scenario:
    world = generate_world(WorldConfig(users=120, items_per_domain=48, seed=3))
    # a knowledge graph of the world's own entities: item -mentions-> word
    words = sorted({e.entity_id for ents in world.entities.values() for e in ents})
    ents = tuple(words) + tuple(f"item:{i}" for i in world.items)
    index = {e: n for n, e in enumerate(ents)}
    triples = [(index[f"item:{i}"], 0, index[e.entity_id])
               for i, es in world.entities.items() for e in es]
    world.kg = KnowledgeGraph(ents, ("mentions",), np.array(triples),
                              {i: (index[f"item:{i}"],) for i in world.items})
    return build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=2))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_scores_every_test_user(name: str, small: Scenario, tmp_path: Path) -> None:
    scorer = METHODS[name](epochs=2, dim=16)
    assert set(scorer.search_space) <= set(KGRecConfig.__dataclass_fields__)
    scorer.fit(small, seed=0)
    assert scorer.result is not None and scorer.result.examples == 2 * len(small.train)
    users = sorted({r.user_id for r in small.test})
    zero = [u for u in users if small.buckets[u] == "zero-shot"]
    assert zero
    scores = scorer.score(users)
    assert scores.shape == (len(users), len(small.target_items()))
    assert np.isfinite(scores).all() and scores.std() > 0
    scorer.save(tmp_path / "m")
    again = KGRecScorer.load(tmp_path / "m", small)
    assert again.name == name
    np.testing.assert_allclose(again.score(users), scores, rtol=1e-5, atol=1e-6)


def test_gnn_embeds_a_user_from_their_items_alone(small: Scenario) -> None:
    """Inductive: a zero-shot user's vector changes with their source items, while
    MultD's target part for them is the untrained random row."""
    scorer = METHODS["MultD GNN"](epochs=2, dim=16)
    scorer.fit(small, seed=0)
    zero = sorted(u for u, b in small.buckets.items() if b == "zero-shot")
    scores = scorer.score(zero[:10])
    assert len({tuple(np.round(row, 5)) for row in scores}) > 1


def test_short_names_cover_every_method() -> None:
    assert sorted(SHORT.values()) == sorted(METHODS)
