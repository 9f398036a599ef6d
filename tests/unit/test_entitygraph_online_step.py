"""The continuous trainer's EntityGraph step (trainer/online/kinds.py): the step on the
batch's unique entities with row-wise Adam against the plain dense step."""

from __future__ import annotations

import copy

import numpy as np
import torch

from mekb.settings import Settings
from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
from trainer.online.examples import Example
from trainer.online.kinds import EntityGraphOnline, dense_step


def _setup(n_entities: int = 60, n_examples: int = 24) -> tuple[EntityGraph, list[Example]]:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = EntityGraph(EntityGraphConfig(dim=8, hidden=16, dropout=0.0), 12)
    ents = [f"kb:e{i}" for i in range(n_entities)]
    model.add_entities(ents, rng.standard_normal((n_entities, 12)).astype(np.float32))
    model.add_items([f"i{i}" for i in range(10)], ["a"] * 5 + ["b"] * 5)
    examples = []
    for i in range(n_examples):
        # entities 0..39 only: rows 40..59 are never touched; example 3 has an empty MeKB
        # and example 5 an entity without a row (left out)
        k = 0 if i == 3 else int(rng.integers(1, 7))
        ids = tuple(f"kb:e{j}" for j in rng.choice(40, size=k, replace=False))
        if i == 5:
            ids += ("kb:unknown",)
        scores = tuple(float(x) for x in rng.uniform(0.1, 1.0, size=len(ids)))
        item = int(rng.integers(10))
        examples.append(Example(f"x{i}", f"u{i}", "a" if item < 5 else "b", f"i{item}",
                                float(i), tuple(ids), len(ids), ids, scores))
    return model, examples


def test_encode_unique_is_encode_of_the_gathered_vectors() -> None:
    model, _ = _setup()
    model.eval()
    uniq = torch.tensor([3, 7, 11, 20])
    index = torch.tensor([[0, 1, 2], [3, 3, 0], [1, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    scores = torch.rand(3, 3)
    vectors = model.entity_table.detach()[uniq]
    expected = model.encode(vectors[index], scores, mask)
    torch.testing.assert_close(model.encode_unique(vectors, index, scores, mask), expected)


def test_first_step_equals_the_dense_step_then_untouched_rows_stay() -> None:
    model, examples = _setup()
    dense = copy.deepcopy(model)
    sparse_kind, dense_kind = EntityGraphOnline(Settings()), EntityGraphOnline(Settings())
    opt_s, opt_d = sparse_kind.optimizer(model), dense_kind.optimizer(dense)
    gen = torch.Generator().manual_seed(0)
    before = model.entity_table.detach().clone()
    loss_s = sparse_kind.step(model, examples[:12], opt_s, gen)
    loss_d = dense_step(dense, dense_kind.loss(dense, examples[:12], gen), opt_d)
    assert loss_s == loss_d
    for (name, p), q in zip(model.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    moved = (model.entity_table.detach() != before).any(1)
    assert moved[:40].any() and not moved[40:].any()
    # second step: rows the batch does not touch keep their values and moments (lazy
    # Adam), where dense Adam moves every row that has momentum
    touched = {model.entity_row(e) for ex in examples[12:] for e in ex.entity_ids}
    idle = [r for r in range(40) if r not in touched and moved[r]]
    assert idle, "the test needs rows trained in step 1 and idle in step 2"
    state = opt_s.state[model.entity_table]
    snap = (model.entity_table.detach()[idle].clone(), state["exp_avg"][idle].clone())
    sparse_kind.step(model, examples[12:], opt_s, gen)
    dense_step(dense, dense_kind.loss(dense, examples[12:], gen), opt_d)
    assert torch.equal(model.entity_table.detach()[idle], snap[0])
    assert torch.equal(state["exp_avg"][idle], snap[1])
    assert float(state["step"]) == 2.0
    assert not torch.equal(dense.entity_table.detach()[idle], snap[0])
