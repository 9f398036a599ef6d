"""`mekb train --model <second-paper model>` and `mekb evaluate --model DIR` as real
processes on the synthetic world with its knowledge graph: the saved model reloads and
scores its own scenario; a KGE model on a dataset without a graph is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data.scenario import ScenarioConfig, build_scenario
from trainer.data.specs import load_dataset
from trainer.evaluate import evaluate
from trainer.kgrec.scorers import KGRecScorer

pytestmark = pytest.mark.integration


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    return subprocess.run([sys.executable, "-m", "mekb.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_kgrec_model_and_reload(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _run("train", "--model", "multd-kge-gnn", "--dataset", "synthetic:1:kg",
                "--out", str(out), "--epochs", "2", "--dim", "16", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert "examples/s" in done.stdout
    info = json.loads((out / "train.json").read_text())
    assert info["method"] == "MultD KGE+GNN" and info["model"]["dim"] == 16
    assert info["result"]["epochs"] == 2 and info["examples_per_s"] > 0
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in info["scenario"].items()}
    sc = build_scenario(load_dataset("synthetic:1:kg"), ScenarioConfig(**saved))
    scorer = KGRecScorer.load(out / "model", sc)
    users = sorted({r.user_id for r in sc.test})
    scores = scorer.score(users)
    assert scores.shape == (len(users), len(sc.target_items())) and np.isfinite(scores).all()
    shown = _run("evaluate", "--dataset", "synthetic:1:kg", "--model", str(out))
    assert shown.returncode == 0, shown.stderr
    metrics = json.loads(shown.stdout)
    assert metrics["all"] == pytest.approx(evaluate(scorer, sc, seed=1)["all"])


def test_kge_without_knowledge_graph_is_a_one_line_error(tmp_path: Path) -> None:
    done = _run("train", "--model", "kge", "--dataset", "synthetic:1", "--out", str(tmp_path / "x"),
                "--epochs", "1")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("mekb: error: KGE needs a knowledge")
    assert "Traceback" not in done.stderr
