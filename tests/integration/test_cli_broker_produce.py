"""The issue's check: `mekb broker`, then `mekb produce` of a file with 5 % bad lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mekb.broker import free_port
from mekb.events import parse_interaction
from mekb.settings import Settings
from tests.integration.helpers import consume_all

pytestmark = pytest.mark.integration


def _write_events(path: Path, n: int) -> int:
    bad = 0
    with open(path, "w") as fh:
        for i in range(n):
            if i % 20 == 7:
                bad += 1
                fh.write(["{oops", json.dumps({"event_id": f"b{i}", "user_id": "u"}),
                          json.dumps({"event_id": f"b{i}", "user_id": "u", "item_id": "i",
                                      "domain": "Bad Domain", "action": "click", "ts": 1})][i % 3])
            else:
                fh.write(json.dumps({
                    "event_id": f"e{i}", "user_id": f"u{i % 17}", "item_id": f"i{i % 31}",
                    "domain": "books", "action": "click", "ts": 1700000000 + i,
                }))
            fh.write("\n")
    return bad


def test_broker_then_produce_counts_rejects_exactly(tmp_path: Path) -> None:
    env = {**os.environ, "MEKB_DATA_DIR": str(tmp_path / "data")}
    port = free_port()
    broker = subprocess.Popen(
        [sys.executable, "-m", "mekb.cli.main", "broker", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert broker.stdout is not None
        deadline = time.monotonic() + 30
        for line in broker.stdout:
            if "broker listening" in line or time.monotonic() > deadline:
                break
        assert (tmp_path / "data" / "broker.json").exists()
        events = tmp_path / "events.jsonl"
        bad = _write_events(events, 2000)
        assert bad == 100
        # No MEKB_BOOTSTRAP_SERVERS: produce finds the broker through broker.json.
        result = subprocess.run(
            [sys.executable, "-m", "mekb.cli.main", "produce", str(events), "--no-progress"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "sent 1900 events" in result.stdout
        assert "rejected 100 lines" in result.stdout
        rejected_text = (tmp_path / "events.jsonl.rejected").read_text()
        rejects = [json.loads(x) for x in rejected_text.splitlines() if x]
        assert len(rejects) == 100
        assert {r["reason"] for r in rejects} == {"bad_json", "missing_field", "bad_value"}

        settings = Settings(bootstrap_servers=f"127.0.0.1:{port}", broker_flavor="tansu")
        records = consume_all(settings, "interactions", 1900)
        ids = sorted(parse_interaction(r.value).event_id for r in records)
        expected = sorted(f"e{i}" for i in range(2000) if i % 20 != 7)
        assert ids == expected
    finally:
        broker.send_signal(signal.SIGINT)
        assert broker.wait(15) == 0
    assert not (tmp_path / "data" / "broker.json").exists()
