"""`mekb trainer --kind entitygraph` with a knowledge graph, as a real process against
the real broker: MEKB_TRAINER_KG_PATH (a store written by `KnowledgeGraph.save`) merged
with the item agent's compacted item-entities topic, read at start-up; the trainer
trains with TransE and publishes an EntityGraph version whose manifest and weights
record the KG part, with the graph's nodes from both sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kg.graph import KnowledgeGraph
from mekb.broker import free_port
from mekb.registry import Registry
from mekb.settings import Settings
from streams.catalog import LinkedItem
from tests.integration.streams_helpers import produce
from tests.integration.test_trainer_process import (  # noqa: F401 (fixture)
    TASTES,
    Trainer,
    examples,
    trainer_env,
    tsettings,
    wait_for,
)
from tests.unit.test_online_loop import tiny_encoder  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_trainer_process_trains_and_publishes_with_a_knowledge_graph(
    tsettings: Settings, tiny_encoder: str, tmp_path: Path,  # noqa: F811
) -> None:
    store = KnowledgeGraph(("kb:NASA", "kb:Mars", "kb:Pasta", "kb:Olive oil", "kb:Moon"),
                           ("related",), np.array([[0, 0, 1], [4, 0, 1], [2, 0, 3]]),
                           {}).save(tmp_path / "kg.npz")
    items = [LinkedItem(item, "action", tuple((f"kb:{t}", t, 1.0) for t in titles), "d")
             for titles, ids in TASTES.values() for item in ids]
    produce(tsettings, "item-entities", [(it.item_id.encode(), it.encode()) for it in items])
    produce(tsettings, "training-examples", examples(0, 120))
    registry = Registry(tsettings.data_dir / "registry")
    trainer = Trainer(tsettings, tmp_path / "trainer.log", MEKB_MODEL_KIND="entitygraph",
                      MEKB_TRAINER_ENCODER=tiny_encoder, MEKB_TRAINER_KG_DIM="8",
                      MEKB_TRAINER_KG_PATH=str(store),
                      MEKB_TRAINER_PUBLISH_EVERY="40")
    try:
        trainer.wait_healthy()

        def trained() -> bool:
            active = registry.active()
            return active is not None and active.manifest.get("trainer", {}).get(
                "examples_seen", 0) >= 80

        wait_for(trained, 120, "an EntityGraph version trained with the KG", trainer)
    finally:
        trainer.stop()
    active = registry.active()
    assert active is not None and active.model_kind == "entitygraph"
    registry.verify(active.version)
    assert active.manifest["kg_dim"] == 8
    config = json.loads((active.path / "entitygraph" / "config.json").read_text())
    assert config["kg_dim"] == 8 and config["kg_entities"] > 0
    nodes = json.loads((active.path / "entitygraph" / "kg.json").read_text())["entities"]
    # the store's nodes and the item agent's edges, in one graph
    assert {"kb:Moon", "kb:NASA", "product:s1", "product:c3", "domain:action"} <= set(nodes)
    assert "knowledge graph tied" in trainer.log.read_text()


def test_trainer_with_an_unreadable_kg_store_stops_with_one_line(
    tsettings: Settings, tmp_path: Path,  # noqa: F811
) -> None:
    bad = tmp_path / "kg.npz"
    bad.write_bytes(b"not a graph")
    env = trainer_env(tsettings, free_port(), MEKB_MODEL_KIND="entitygraph",
                      MEKB_TRAINER_KG_DIM="8", MEKB_TRAINER_KG_PATH=str(bad))
    done = subprocess.run([sys.executable, "-m", "mekb.cli.main", "trainer"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("mekb: error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert errors[0].startswith(f"mekb: error: MEKB_TRAINER_KG_PATH: {bad}: not a "
                                "knowledge-graph file")
    assert "Traceback" not in done.stderr
