"""TransE in the continuous EntityGraph trainer (issue 16): a trainer configured with a
small knowledge-graph store (plus the item agent's edges) ties its entities to the
graph, its TransE loss falls on the graph's triples, a restart resumes the KG part
(and grows it with the rebuilt graph), and a published bundle's towers match torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kg.graph import KGError, KnowledgeGraph
from streams.catalog import LinkedItem
from tests.unit.test_model_kinds import KindHarness
from tests.unit.test_online_loop import Record, example, make_settings, stream, tiny_encoder
from trainer.entitygraph.export import parity
from trainer.entitygraph.model import EntityGraph
from trainer.kgrec.transe import corrupt, kg_margin_loss
from trainer.online.knowledge import TripleSampler, align, build_graph

__all__ = ["tiny_encoder"]  # the fixture, shared with test_online_loop

KG_DIM = 8


def _store(path: Path) -> Path:
    """The world's graph: space entities around Mars, cooking ones around olive oil,
    and a node (kb:Neptune) no example names."""
    ents = ("kb:Apollo", "kb:rocket", "kb:Mars orbit", "kb:pasta", "kb:kitchen",
            "kb:olive oil", "kb:Neptune", "kb:space", "kb:food")
    e = {name: i for i, name in enumerate(ents)}
    triples = [(e["kb:Apollo"], 0, e["kb:Mars orbit"]), (e["kb:rocket"], 0, e["kb:Mars orbit"]),
               (e["kb:Neptune"], 0, e["kb:Mars orbit"]), (e["kb:Mars orbit"], 1, e["kb:space"]),
               (e["kb:Apollo"], 1, e["kb:space"]), (e["kb:pasta"], 0, e["kb:olive oil"]),
               (e["kb:kitchen"], 0, e["kb:olive oil"]), (e["kb:olive oil"], 1, e["kb:food"]),
               (e["kb:pasta"], 1, e["kb:food"])]
    return KnowledgeGraph(ents, ("near", "is_a"), np.array(triples), {}).save(path)


def _items(extra: tuple[LinkedItem, ...] = ()) -> list[bytes]:
    """The item agent's records: each item linked to the entities of its taste."""
    recs = [LinkedItem(f"s{i}", "action", (("kb:Apollo", "Apollo", 1.0),
                                           ("kb:rocket", "rocket", 1.0)), "d")
            for i in range(3)]
    recs += [LinkedItem(f"c{i}", "action", (("kb:pasta", "pasta", 1.0),
                                            ("kb:kitchen", "kitchen", 1.0)), "d")
             for i in range(3)]
    return [r.encode() for r in (*recs, *extra)]


def _harness(settings, records):  # type: ignore[no-untyped-def]
    h = KindHarness(settings, "entitygraph")
    h.kind.item_records = lambda: records
    return h


def _graph_loss(model: EntityGraph, triples: np.ndarray) -> float:
    """The TransE margin loss of every triple against fixed corruptions."""
    t = torch.from_numpy(triples)
    gen = torch.Generator().manual_seed(7)
    both = torch.cat([t] + [corrupt(t, model.transe.n_entities, gen) for _ in range(20)])
    with torch.no_grad():
        dist = model.transe.distance(both)
        pos = dist[: len(t)].repeat(20)
        return float(kg_margin_loss(pos, dist[len(t):], model.config.kg_margin))


@pytest.fixture
def kg_settings(tmp_path: Path, tiny_encoder: str):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path, tiny_encoder, model_kind="entitygraph",
                         trainer_kg_dim=KG_DIM, trainer_kg_path=_store(tmp_path / "kg.npz"),
                         trainer_kg_batch=16, trainer_kg_weight=1.0)


def test_trainer_with_a_kg_store_trains_transe_resumes_and_exports(kg_settings) -> None:  # type: ignore[no-untyped-def]
    h = _harness(kg_settings, _items())
    t = h.trainer
    t.process(stream(40))
    model = t.model
    assert model.transe is not None and model.config.kg_dim == KG_DIM
    # store nodes + the item agent's product/domain nodes, merged by id
    assert {"kb:Neptune", "product:s0", "domain:action"} <= set(model.kg_entity_ids)
    assert {"near", "is_a", "kb", "domain"} == set(model.kg_relation_ids)
    assert (model.entity_kg_row >= 0).all()  # every example entity is a node
    node = {e: i for i, e in enumerate(model.kg_entity_ids)}
    assert model.entity_kg_row[model.entity_row("kb:Apollo")] == node["kb:Apollo"]
    graph = build_graph(KnowledgeGraph.load(kg_settings.trainer_kg_path), _items())
    triples = align(graph, model.kg_entity_ids, model.kg_relation_ids).triples
    assert len(triples) == 9 + 6 * 2 + 6  # store + item→entity + item→domain
    before = _graph_loss(model, triples)
    for n in range(6):
        t.process(stream(200, 40 + 200 * n))
    after = _graph_loss(model, triples)
    assert t.kind.last_kg_loss is not None
    assert h.prom.get_sample_value("mekb_trainer_kg_loss") == t.kind.last_kg_loss
    assert after < 0.7 * before, (before, after)
    assert float(model.kg_proj.weight.detach().abs().sum()) > 0  # the tie was trained
    norms = model.transe.entities.weight.detach()[:-1].norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-5  # TransE's unit ball kept
    tied = model.entity_vectors(torch.arange(model.n_entities)).detach()
    assert not torch.allclose(tied, model.entity_table.detach())

    # an entity that is no node of the start-up graph has no KG row and no tie
    t.process([Record(0, 9000, example(9001, "s1", ["Apollo", "Jupiter"]))])
    row = model.entity_row("kb:Jupiter")
    assert row is not None and int(model.entity_kg_row[row]) == -1
    torch.testing.assert_close(model.entity_vectors(torch.tensor([row])).detach(),
                               model.entity_table.detach()[row:row + 1])

    # checkpoint → restart: the KG part is restored as it was ...
    t.checkpoint()
    saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("transe.")}
    opt_state = t.optimizer.state[model.transe.entities.weight]["exp_avg"].clone()
    extra = (LinkedItem("s9", "action", (("kb:Jupiter", "Jupiter", 1.0),), "d"),)
    again = _harness(kg_settings, _items(extra))
    m2 = again.trainer.model
    assert again.source == "checkpoint" and m2.kg_entity_ids == model.kg_entity_ids
    for k, v in saved.items():
        torch.testing.assert_close(m2.state_dict()[k], v)
    # ... and grown with the rebuilt graph: old rows and moments stay, new nodes appended,
    # an entity that became a node is linked
    n_old = m2.transe.n_entities
    again.kind._ensure_kg(m2, again.trainer.optimizer)  # what its first examples do
    assert m2.kg_entity_ids[n_old:] == ["product:s9", "kb:Jupiter"]
    assert m2.transe.n_entities == n_old + 2
    torch.testing.assert_close(m2.transe.entities.weight.detach()[:n_old], saved[
        "transe.entities.weight"][:n_old])
    grown = again.trainer.optimizer.state[m2.transe.entities.weight]["exp_avg"]
    torch.testing.assert_close(grown[:n_old], opt_state[:n_old])
    assert not grown[n_old:n_old + 2].any()
    assert int(m2.entity_kg_row[m2.entity_row("kb:Jupiter")]) == n_old + 1
    again.trainer.process(stream(100, 5000))  # trains on with the grown tables

    # publication: the bundle carries the KG part; ONNX towers match torch
    again.trainer.publish_full(2e9)
    top = again.registry.active()
    assert top is not None and top.model_kind == "entitygraph"
    assert "entitygraph/kg.json" in top.files
    m2.eval()
    assert parity(m2, top.path) < 1e-4
    loaded = EntityGraph.load(top.path / "entitygraph")
    assert loaded.config.kg_dim == KG_DIM and loaded.kg_entity_ids == m2.kg_entity_ids
    torch.testing.assert_close(loaded.entity_vectors(), m2.entity_vectors().detach())
    # a trainer without checkpoints starts from that version, KG part included
    shutil.rmtree(again.store.root)
    third = _harness(kg_settings, _items(extra))
    assert third.source == "registry" and third.trainer.model.transe is not None
    third.trainer.process(stream(40, 8000))
    assert third.trainer.model.transe.n_entities == m2.transe.n_entities  # nothing new


def test_kg_off_by_default_and_a_bad_store_is_refused(tmp_path: Path, tiny_encoder: str) -> None:
    def no_read() -> list[bytes]:
        raise AssertionError("item-entities read with the KG off")

    h = _harness(make_settings(tmp_path, tiny_encoder, model_kind="entitygraph"), [])
    h.kind.item_records = no_read
    h.trainer.process(stream(40))
    assert h.trainer.model.transe is None and h.trainer.model.config.kg_dim == 0
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a graph")
    s = make_settings(tmp_path / "b", tiny_encoder, model_kind="entitygraph",
                      trainer_kg_dim=4, trainer_kg_path=bad)
    with pytest.raises(KGError, match="MEKB_TRAINER_KG_PATH: .*bad.npz: not a knowledge"):
        _harness(s, [])  # when the trainer starts, not at its first examples


def test_triple_sampler_is_fixed_size_and_favours_the_batch() -> None:
    triples = np.array([[0, 0, 1], [1, 0, 2], [2, 0, 3], [3, 0, 4], [5, 0, 6]])
    sampler = TripleSampler(triples, 7)
    gen = torch.Generator().manual_seed(0)
    got = sampler.sample(torch.tensor([6, -1]), 200, gen)
    assert got.shape == (200, 3)
    assert int((got[:100] == torch.tensor([5, 0, 6])).all(1).sum()) == 100  # incident to 6
    assert len({tuple(r) for r in got[100:].tolist()}) > 3  # uniform over the graph
    assert sampler.sample(torch.tensor([], dtype=torch.long), 8, gen).shape == (8, 3)
    empty = TripleSampler(np.zeros((0, 3), dtype=np.int64), 0)
    assert empty.sample(torch.tensor([0]), 8, gen).shape == (0, 3)


def test_encode_unique_with_kg_vectors_is_encode_of_the_tied_vectors() -> None:
    from trainer.entitygraph.model import EntityGraphConfig

    torch.manual_seed(0)
    model = EntityGraph(EntityGraphConfig(dim=4, hidden=16, attn_dim=8, kg_dim=3), 6)
    model.add_entities([f"e{i}" for i in range(5)], np.random.default_rng(0).standard_normal(
        (5, 6)).astype(np.float32))
    model.attach_kg(4, 1, {"e0": 1, "e2": 3, "e3": 0})
    torch.nn.init.normal_(model.kg_proj.weight)
    model.eval()
    index = torch.tensor([[0, 1, 2], [3, 4, 0], [1, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    scores = torch.rand(3, 3)
    kg_row = model.entity_kg_row
    kg = model.transe.entities(kg_row.clamp(min=0)) * (kg_row >= 0).float().unsqueeze(-1)
    with torch.no_grad():
        got = model.encode_unique(model.entity_table, index, scores, mask, kg)
        want = model.encode(model.entity_vectors()[index], scores, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)



def test_a_frozen_entity_table_takes_the_dense_step_with_the_transe_loss(
        tmp_path: Path) -> None:
    from mekb.settings import Settings
    from trainer.entitygraph.model import EntityGraphConfig
    from trainer.online.examples import Example
    from trainer.online.kinds import EntityGraphOnline

    torch.manual_seed(0)
    model = EntityGraph(EntityGraphConfig(dim=4, hidden=8, attn_dim=4,
                                          finetune_entities=False), 6)
    model.add_entities(["kb:a", "kb:b"], np.ones((2, 6), np.float32))
    model.add_items(["i0", "i1"], ["d", "d"])
    store = KnowledgeGraph(("kb:a", "kb:b", "kb:c"), ("r",), np.array([[0, 0, 1], [1, 0, 2]]),
                           {}).save(tmp_path / "kg.npz")
    kind = EntityGraphOnline(Settings(trainer_kg_batch=8, trainer_kg_dim=3,
                                      trainer_kg_path=store))
    kind.item_records = lambda: []
    optimizer = kind.optimizer(model)
    kind._ensure_kg(model, optimizer)
    assert model.transe is not None and len(kind._sampler) == 2
    ex = Example("x", "u", "d", "i1", 0.0, ("a", "b"), 2, ("kb:a", "kb:b"), (0.5, 0.5))
    before = model.transe.entities.weight.detach().clone()
    table = model.entity_table.detach().clone()
    for _ in range(3):
        kind.step(model, [ex], optimizer, torch.Generator().manual_seed(0))
    assert kind.last_kg_loss is not None
    assert torch.equal(model.entity_table.detach(), table)  # frozen
    assert not torch.equal(model.transe.entities.weight.detach(), before)
    assert float(model.transe.entities.weight.detach().norm(dim=1).max()) <= 1.0 + 1e-5
    assert float(model.kg_proj.weight.detach().abs().sum()) > 0
