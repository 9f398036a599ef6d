"""`mekb train --model entitygraph` as a real process on the synthetic world with the
real MiniLM title encoder: SIGINT → checkpoint → rerun resumes from it; `mekb evaluate
--model` scores the trained model; it exports to ONNX and ONNX Runtime agrees with
PyTorch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _mekb(*args: str) -> list[str]:
    return [sys.executable, "-m", "mekb.cli.main", *args]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["MEKB_DATA_DIR"] = str(tmp_path / "var")  # the title-vector cache goes here
    return env


def test_entitygraph_train_sigint_resume_export(tmp_path: Path) -> None:
    out = tmp_path / "run"
    progress = out / "checkpoint" / "progress.json"
    args = ["train", "--model", "entitygraph", "--dataset", "synthetic:3", "--dim", "16",
            "--batch-users", "4", "--no-progress", "--out", str(out),
            "--epochs", "100000", "--checkpoint-every", "1"]
    proc = subprocess.Popen(_mekb(*args), env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text()).get("complete"):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    saved = json.loads(progress.read_text())
    assert saved["complete"] and saved["step"] >= 1 and saved["kind"] == "entitygraph"
    cache = list((tmp_path / "var" / "entity-vectors").glob("*.safetensors"))
    assert len(cache) == 1  # every title encoded once, kept for the rerun

    stop_at = saved["step"] + 3
    done = subprocess.run(_mekb(*args, "--max-steps", str(stop_at)), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads((out / "train.json").read_text())
    assert info["kind"] == "entitygraph"
    assert info["result"]["resumed_from"] == saved["step"]
    assert info["result"]["steps"] == stop_at and info["result"]["examples"] > 0

    evaluated = subprocess.run(
        _mekb("evaluate", "--dataset", "synthetic:3", "--model", str(out)),
        env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert 0.0 <= metrics["all"]["HR@10"] <= 1.0 and metrics["all"]["n"] > 0

    from trainer.kinds import get_kind, kind_of

    assert kind_of(out / "model") == "entitygraph"
    kind = get_kind("entitygraph")
    model = kind.load(out / "model")
    fields = kind.export_onnx(model, tmp_path / "bundle")
    assert fields["n_entities"] == model.n_entities > 0
    diff = kind.parity(model, tmp_path / "bundle")
    print(f"EntityGraph ONNX vs PyTorch max abs diff (trained model): {diff:.2e}")
    assert diff < 1e-5


def test_train_rejects_unknown_model_kind(tmp_path: Path) -> None:
    result = subprocess.run(
        _mekb("train", "--model", "nope", "--dataset", "synthetic", "--out", str(tmp_path)),
        env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "mekb: error:" in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_runs_the_entitygraph_mf_hybrid_next_to_its_parts(tmp_path: Path) -> None:
    """`mekb evaluate --methods emcdr,entitygraph,entitygraph-mf` as a real process: one
    record per method; the hybrid scores users with target training records exactly as
    EntityGraph does (the same fit), so its multi-shot figures equal EntityGraph's, and
    its zero-shot users (EMCDR's target side) do not."""
    records = tmp_path / "runs.jsonl"
    result = subprocess.run(
        _mekb("evaluate", "--dataset", "synthetic:3", "--methods",
              "emcdr,entitygraph,entitygraph-mf", "--seeds", "0", "--out", str(records)),
        env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    by_method = {r["method"]: r for r in map(json.loads, records.read_text().splitlines())}
    assert set(by_method) == {"EMCDR", "EntityGraph", "EntityGraph+MF (hybrid)"}
    eg, hybrid = by_method["EntityGraph"]["metrics"], \
        by_method["EntityGraph+MF (hybrid)"]["metrics"]
    assert hybrid["multi-shot"]["n"] > 0 and hybrid["zero-shot"]["n"] > 0
    assert hybrid["multi-shot"]["HR@10"] == eg["multi-shot"]["HR@10"]
    assert hybrid["multi-shot"]["NDCG@10"] == eg["multi-shot"]["NDCG@10"]
    assert hybrid["zero-shot"]["NDCG@10"] != eg["zero-shot"]["NDCG@10"]
