"""`mekb up --once` brings the system up on the embedded default and replays the sample."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_up_replays_sample_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "MEKB_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "up", "--once", "--limit", "300", "--rate", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed items.jsonl: sent 1682 events" in result.stdout
    assert "replayed interactions.jsonl: sent 300 events" in result.stdout
    assert "rejected 0 lines" in result.stdout
    assert "stopped" in result.stdout
    assert (tmp_path / "logs" / "broker.log").exists()
    assert not (tmp_path / "broker.json").exists()
