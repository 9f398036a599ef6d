"""`mekb up --once` brings the whole system up on the embedded default, replays the
sample, waits until a model serves embeddings and stops every process cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mekb.broker import free_port
from tests.integration.system_helpers import child_env, default_alias_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_up_once_replays_sample_serves_and_stops_cleanly(tmp_path: Path) -> None:
    env = child_env(
        MEKB_DATA_DIR=tmp_path, MEKB_ALIAS_TABLE=default_alias_table(),
        MEKB_WORKER_PORT=free_port(), MEKB_TRAINER_PORT=free_port(),
        MEKB_SERVING_PORT=free_port(), MEKB_MONITOR_PORT=free_port(),
        MEKB_TRAINER_MAX_TOKENS=16, MEKB_TRAINER_DIM=32,
    )
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "up", "--once", "--limit", "300", "--rate", "0",
         "--no-prometheus"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert "replayed items.jsonl: sent 1682 events" in out
    assert "replayed interactions.jsonl: sent 300 events" in out
    assert "rejected 0 lines" in out
    assert "serves embeddings" in out and "/v1/users/u1/embedding" in out
    # the default kind (issue 16), whose first version waits for training examples: the
    # ratings wait for the worker to know the items, else they all parked (no examples)
    # and this hung intermittently
    assert "(entitygraph) serves embeddings" in out and "trainer trains entitygraph" in out
    assert result.stdout.rstrip().endswith("stopped")
    assert "killing" not in out, "a process ignored SIGTERM for the whole grace period"
    for name in ("broker", "worker", "trainer", "serving", "monitor"):
        assert (tmp_path / "logs" / f"{name}.log").exists(), name
    assert not (tmp_path / "broker.json").exists()


def test_up_once_gives_up_on_a_first_version_that_cannot_come(tmp_path: Path) -> None:
    """One rating: at most one training example, and without entities (its user's MeKB
    was empty before it), so EntityGraph never has a first version. `mekb up --once`
    says so in one line once nothing moves for --stall-timeout, instead of waiting for
    --ready-timeout."""
    env = child_env(
        MEKB_DATA_DIR=tmp_path, MEKB_ALIAS_TABLE=default_alias_table(),
        MEKB_WORKER_PORT=free_port(), MEKB_TRAINER_PORT=free_port(),
        MEKB_SERVING_PORT=free_port(), MEKB_MONITOR_PORT=free_port(),
    )
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "up", "--once", "--limit", "1", "--rate", "0",
         "--no-prometheus", "--stall-timeout", "10", "--ready-timeout", "500"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-5000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mekb: error:")]
    assert len(errors) == 1 and "no model version" in errors[0], out[-5000:]
    assert "nothing moved for 10s" in errors[0] and "entitygraph" in errors[0]
    assert "Traceback" not in out and "killing" not in out
    assert not (tmp_path / "registry" / "ACTIVE").exists()
    assert not (tmp_path / "broker.json").exists()


def test_up_refuses_prometheus_when_not_installed(tmp_path: Path) -> None:
    env = child_env(MEKB_DATA_DIR=tmp_path, PATH="/nonexistent")
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "up", "--prometheus"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("mekb: error: --prometheus: no `prometheus` binary")
    assert "Traceback" not in result.stderr
