"""Weight averaging (trainer/averaging.py) and EntityGraph's offline training with it:
the warmed-up decay, the average against a hand computation, and a resumed run that
ends with the same averaged model as an uninterrupted one (the dropout masks are drawn
per step, so a resume repeats none)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from trainer import averaging


def test_the_decay_warms_up_then_caps() -> None:
    assert averaging.warmed_decay(0.995, 0) == pytest.approx(0.1)
    assert averaging.warmed_decay(0.995, 10) == pytest.approx(11 / 20)
    assert averaging.warmed_decay(0.995, 10_000) == 0.995


def test_the_average_is_the_hand_computed_ema_and_survives_a_save(tmp_path: Path) -> None:
    model = nn.Linear(1, 1, bias=False)
    ema = averaging.averaged(model, 0.5)
    want = None
    for n, value in enumerate([1.0, 3.0, -2.0, 5.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
        # the first update copies; update n (n earlier ones) keeps warmed_decay(0.5, n)
        d = averaging.warmed_decay(0.5, n)
        want = value if want is None else d * want + (1 - d) * value
    assert float(ema.module.weight.detach()) == pytest.approx(want)
    averaging.save(ema, tmp_path)
    other = averaging.averaged(nn.Linear(1, 1, bias=False), 0.5)
    assert averaging.load(other, tmp_path)
    assert float(other.module.weight.detach()) == pytest.approx(want) and int(other.n_averaged) == 4
    averaging.copy_into(model, other)
    assert float(model.weight.detach()) == pytest.approx(want)
    assert not averaging.load(other, tmp_path / "none")
    with pytest.raises(ValueError, match="decay"):
        averaging.averaged(model, 1.0)


def test_entitygraph_training_returns_the_average_and_resumes_it(tmp_path: Path) -> None:
    from trainer.data.scenario import ScenarioConfig, build_scenario
    from trainer.data.synthetic import WorldConfig, generate_world
    from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
    from trainer.entitygraph.train import EntityGraphTrainConfig, build_model, train
    from trainer.offline import MODEL_DIR

    world = generate_world(WorldConfig(seed=0, users=60, items_per_domain=20))
    sc = build_scenario(world, ScenarioConfig("books", "movies", min_item_positives=2))
    mcfg = EntityGraphConfig(dim=8, hidden=16, pretrained=False)
    cfg = EntityGraphTrainConfig(epochs=2, batch_users=16, progress=False, ema_decay=0.9)

    whole = build_model(mcfg, sc)
    first_whole = train(whole, sc, cfg, checkpoint_dir=tmp_path / "whole")
    raw = EntityGraph.load(tmp_path / "whole" / MODEL_DIR)  # the last step's weights
    assert not torch.allclose(whole.item_table, raw.item_table)  # the average differs

    # interrupted after 3 steps, then resumed: the average goes on from the checkpoint's
    # (it counts every step of both runs) instead of starting again from the raw weights
    parts = build_model(mcfg, sc)
    first = train(parts, sc, cfg, checkpoint_dir=tmp_path / "parts", max_steps=3)
    assert first.steps == 3
    resumed = build_model(mcfg, sc)
    second = train(resumed, sc, cfg, checkpoint_dir=tmp_path / "parts")
    assert second.resumed_from == 3 and second.steps == first_whole.steps
    for run, model in (("whole", whole), ("parts", resumed)):
        saved = load_file(str(tmp_path / run / averaging.EMA_FILE))
        assert int(saved["n_averaged"]) == first_whole.steps
        assert torch.equal(saved["module.item_table"], model.item_table.detach())
    # the same steps, dropout masks included, and the same average: the same model
    for name, value in whole.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6), name

    plain = build_model(mcfg, sc)
    train(plain, sc, EntityGraphTrainConfig(epochs=2, batch_users=16, progress=False,
                                            ema_decay=0.0))
    assert torch.allclose(plain.item_table, raw.item_table, atol=1e-6)  # off: last step
