"""EntityGraph's free user vectors (trainer/entitygraph/distill.py): the pull is the
hand-computed mean squared distance and moves only the tower; they are checkpointed
with the user ids; a checkpoint without them still resumes (they start then)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.entitygraph.distill import FILE, UserVectors


def test_distance_is_the_mean_square_and_pulls_only_the_tower() -> None:
    tower = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    free = torch.tensor([[0.0, 2.0], [2.0, 1.0]], requires_grad=True)
    d = UserVectors.distance(tower, free)
    assert float(d) == pytest.approx((1 + 0 + 4 + 4) / 4)
    d.backward()
    assert free.grad is None
    assert torch.allclose(tower.grad, 2 * (tower.detach() - free.detach()) / 4)


def test_rows_save_and_load(tmp_path: Path) -> None:
    vectors = UserVectors(["u1", "u2", "u3"], 4, seed=0)
    assert torch.equal(vectors.rows(["u3", "u1"]), vectors.table[[2, 0]])
    vectors.save(tmp_path)
    again = UserVectors(["u1", "u2", "u3"], 4, seed=1)
    assert not torch.equal(again.table, vectors.table)
    assert again.load(tmp_path) and torch.equal(again.table, vectors.table)
    assert not UserVectors(["u1", "u2"], 4, seed=0).load(tmp_path)  # other users
    (tmp_path / FILE).unlink()
    assert not again.load(tmp_path)


def test_a_checkpoint_without_user_vectors_resumes_and_they_start(tmp_path: Path) -> None:
    """A checkpoint written with distill 0 (as before there were free vectors) resumes
    under the default distill: its optimiser state loads, the vectors start at the
    resumed step and are checkpointed from then on."""
    from trainer.data.scenario import ScenarioConfig, build_scenario
    from trainer.data.synthetic import WorldConfig, generate_world
    from trainer.entitygraph.model import EntityGraphConfig
    from trainer.entitygraph.train import EntityGraphTrainConfig, build_model, train

    world = generate_world(WorldConfig(seed=0, users=60, items_per_domain=20))
    sc = build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=2))
    mcfg = EntityGraphConfig(dim=8, hidden=16, pretrained=False)
    old = EntityGraphTrainConfig(epochs=2, batch_users=16, progress=False, distill=0.0)
    train(build_model(mcfg, sc), sc, old, checkpoint_dir=tmp_path, max_steps=2)
    assert not (tmp_path / FILE).exists()
    result = train(build_model(mcfg, sc), sc, EntityGraphTrainConfig(
        epochs=2, batch_users=16, progress=False), checkpoint_dir=tmp_path, max_steps=4)
    assert result.resumed_from == 2 and result.steps == 4
    assert (tmp_path / FILE).is_file()
