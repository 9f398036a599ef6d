"""`mekb train` (SIGINT → checkpoint → resume), `mekb evaluate`, `mekb export-onnx`,
run as real processes on the synthetic world with the real MiniLM encoder."""

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

TINY = ["--dataset", "synthetic:3", "--max-tokens", "16", "--freeze-layers", "6",
        "--dim", "16", "--batch-users", "16", "--no-progress"]


def _mekb(*args: str) -> list[str]:
    return [sys.executable, "-m", "mekb.cli.main", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_train_sigint_resume_evaluate_export(tmp_path: Path) -> None:
    out = tmp_path / "run"
    progress = out / "checkpoint" / "progress.json"
    proc = subprocess.Popen(
        _mekb("train", *TINY, "--out", str(out), "--epochs", "100000", "--checkpoint-every", "1"),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text()).get("complete"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err
    saved = json.loads(progress.read_text())
    assert saved["complete"] and saved["step"] >= 1
    stop_at = saved["step"] + 2
    done = subprocess.run(
        _mekb("train", *TINY, "--out", str(out), "--epochs", "100000", "--checkpoint-every", "1",
              "--max-steps", str(stop_at)),
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads((out / "train.json").read_text())
    assert info["result"]["resumed_from"] == saved["step"]
    assert info["result"]["steps"] == stop_at

    evaluated = subprocess.run(
        _mekb("evaluate", "--dataset", "synthetic:3", "--model", str(out)),
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert 0.0 <= metrics["all"]["HR@10"] <= 1.0 and metrics["all"]["n"] > 0

    bundle = tmp_path / "bundle"
    exported = subprocess.run(
        _mekb("export-onnx", str(out / "model"), "--out", str(bundle), "--version", "v-test"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    diff = float(exported.stdout.split("max abs diff:")[1].split()[0])
    print(f"ONNX vs PyTorch max abs diff (trained model): {diff:.2e}")
    assert diff < 1e-4
    assert json.loads((bundle / "manifest.json").read_text())["version"] == "v-test"


def test_evaluate_baselines_over_seeds(tmp_path: Path) -> None:
    records = tmp_path / "runs.jsonl"
    result = subprocess.run(
        _mekb("evaluate", "--dataset", "synthetic:3", "--methods", "popularity,youtubednn",
              "--seeds", "0,1", "--id-epochs", "2", "--out", str(records),
              "--markdown", str(tmp_path / "t.md")),
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert sorted((r["method"], r["seed"]) for r in lines) == [
        ("Popularity", 0), ("Popularity", 1),
        ("YoutubeDNN (target only)", 0), ("YoutubeDNN (target only)", 1)]
    table = (tmp_path / "t.md").read_text()
    assert "| Popularity |" in table and "zero-shot HR@10" in table and "±" in table


def test_train_rejects_bad_scenario(tmp_path: Path) -> None:
    result = subprocess.run(
        _mekb("train", "--dataset", "synthetic", "--scenario", "books:nope",
              "--out", str(tmp_path)),
        env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "mekb: error:" in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_torchrun_single_cpu_process(tmp_path: Path) -> None:
    """DistributedDataParallel (gloo) with one CPU process, launched by torchrun."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=1", "-m", "mekb.cli.main", "train",
         *TINY, "--out", str(out), "--max-steps", "2"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "train.json").read_text())
    assert info["result"]["steps"] == 2 and info["result"]["examples"] > 0
