"""EntityGraph's entity vectors in the continuous trainer (issue 16): each new entity's
title is encoded once, all of a poll's new entities in one batched run, and the vectors
are rebuilt from their titles when the title encoder changes — keyed by its identity
(a digest of config and weights), so an encoder fine-tuned in place counts as another."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.unit.test_model_kinds import KindHarness
from tests.unit.test_online_loop import make_settings, stream, tiny_encoder
from trainer.entitygraph.vectors import TitleEncoder

__all__ = ["tiny_encoder"]  # the fixture, shared with test_online_loop


@pytest.fixture
def encoder_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Titles per TitleEncoder.encode call, in call order."""
    runs: list[int] = []
    original = TitleEncoder.encode

    def counted(self: TitleEncoder, titles: Any) -> np.ndarray:
        runs.append(len(titles))
        return original(self, titles)

    monkeypatch.setattr(TitleEncoder, "encode", counted)
    return runs


def _fine_tune_in_place(path: Path) -> None:
    """What fine-tuning does to an encoder directory: same path, other weights."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path))
    with torch.no_grad():
        for p in model.encoder.layer[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(path))


def _titles(model: Any) -> list[str]:
    return [e.split(":", 1)[1] for e in model.entity_ids]  # stream(): id = kb:<title>


def test_new_entities_are_encoded_once_in_one_batched_run(
        tmp_path: Path, tiny_encoder: str, encoder_runs: list[int]) -> None:
    h = KindHarness(make_settings(tmp_path, tiny_encoder, model_kind="entitygraph"),
                    "entitygraph")
    h.trainer.startup()
    h.trainer.process(stream(40))
    assert h.trainer.model.n_entities == 6
    assert encoder_runs == [6]  # one run for the poll's six new entities
    active = h.registry.active()  # (the first version: its model kind in the info metric)
    assert active is not None and h.metric("mekb_trainer_active_version_info",
                                           version=active.version, kind="full",
                                           model_kind="entitygraph") == 1
    h.trainer.process(stream(400, 40))
    assert encoder_runs == [6]  # known entities are never encoded again
    assert h.trainer.state.examples_seen > 280


def test_entity_vectors_are_rebuilt_when_the_encoder_is_fine_tuned(
        tmp_path: Path, tiny_encoder: str, encoder_runs: list[int]) -> None:
    path = tmp_path / "encoder"
    shutil.copytree(tiny_encoder, path)
    settings = make_settings(tmp_path, str(path), model_kind="entitygraph")
    h = KindHarness(settings, "entitygraph")
    h.trainer.startup()
    h.trainer.process(stream(200))
    old = h.trainer.model
    old_fp = old.config.encoder_fingerprint
    assert old_fp == TitleEncoder(str(path)).fingerprint
    trained = old.entity_table.detach().clone()
    # fine-tuned rows differ from the raw title vectors
    raw = TitleEncoder(str(path)).encode(_titles(old))
    assert not np.allclose(trained.numpy(), raw, atol=1e-4)
    h.trainer.checkpoint()

    # a restart with the same encoder keeps the fine-tuned rows, encodes nothing
    encoder_runs.clear()
    same = KindHarness(settings, "entitygraph")
    same.trainer.ingest(stream(8, 200))
    assert same.source == "checkpoint" and encoder_runs == []
    torch.testing.assert_close(same.trainer.model.entity_table.detach(), trained)

    # the encoder is fine-tuned in place: same path, new identity -> every row rebuilt
    _fine_tune_in_place(path)
    new_fp = TitleEncoder(str(path)).fingerprint
    assert new_fp != old_fp
    encoder_runs.clear()
    again = KindHarness(settings, "entitygraph")
    assert again.source == "checkpoint"
    again.trainer.ingest(stream(8, 200))  # rows are rebuilt before any step
    model = again.trainer.model
    assert encoder_runs == [6]  # all six titles (checkpointed) in one batched run
    assert model.entity_ids == old.entity_ids  # same rows, new vectors
    fresh = TitleEncoder(str(path)).encode(_titles(model))
    np.testing.assert_allclose(model.entity_table.detach().numpy(), fresh, atol=1e-6)
    assert model.config.encoder_fingerprint == new_fp
    state = again.trainer.optimizer.state[model.entity_table]
    assert float(state["exp_avg"].abs().max()) == 0.0  # moments of the old space reset
    assert float(state["exp_avg_sq"].abs().max()) == 0.0
    # training goes on from there, and the next checkpoint records the new encoder
    again.trainer.process(stream(100, 208))
    again.trainer.checkpoint()
    encoder_runs.clear()
    third = KindHarness(settings, "entitygraph")
    third.trainer.ingest(stream(8, 308))
    assert encoder_runs == [] and third.trainer.model.config.encoder_fingerprint == new_fp
