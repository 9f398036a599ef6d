"""The issue's check: `mekb broker`, then `mekb produce` of a file with 5 % bad lines;
issue 17's: `mekb produce` changes nothing (bad UTF-8 rejected, unknown CSV columns
refused), exits non-zero when it rejected lines, and every command that talks to the
broker fails in seconds, in one line, when the broker is unreachable."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mekb.broker import free_port
from mekb.events import parse_interaction, parse_item
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
        # the documented exit status of a run that rejected lines
        assert result.returncode == 3, result.stderr
        assert "sent 1900 events" in result.stdout
        assert "rejected 100 lines" in result.stdout
        assert result.stderr.strip().splitlines() == [
            f"mekb: 100 lines rejected (see {tmp_path / 'events.jsonl.rejected'}; "
            "--allow-rejects exits 0)"]
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


def mekb(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mekb.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_produce_rejects_bad_utf8_and_unknown_columns_through_the_broker(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, "MEKB_DATA_DIR": str(tmp_path / "data"),
           "MEKB_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
           "MEKB_BROKER_FLAVOR": "tansu", "MEKB_TOPIC_PREFIX": settings.topic_prefix,
           "MEKB_PARTITIONS": str(settings.partitions)}
    created = mekb(env, "topics", "create")
    assert created.returncode == 0 and "created:" in created.stdout, created.stderr

    good = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "domain": "books",
            "action": "click", "ts": 1700000000}
    bad = json.dumps({**good, "event_id": "e2", "user_id": "uXX"}).encode().replace(
        b"uXX", b"u\xff\xfe")
    events = tmp_path / "events.jsonl"
    events.write_bytes(json.dumps(good).encode() + b"\n" + bad + b"\n")
    result = mekb(env, "produce", str(events), "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "sent 1 events" in result.stdout and "bad_encoding=1" in result.stdout
    rejected = (tmp_path / "events.jsonl.rejected").read_text().splitlines()
    [reject] = [json.loads(x) for x in rejected]
    assert reject["line"] == 2 and reject["reason"] == "bad_encoding"
    assert base64.b64decode(reject["raw_base64"]) == bad  # nothing lost, nothing changed

    items = tmp_path / "items.csv"
    items.write_text("item_id,domain,title,ts,colour\ni1,books,Dune,1700000000,red\n")
    refused = mekb(env, "produce", str(items), "--no-progress")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith("mekb: error: ")
    assert "unknown column(s) 'colour'" in refused.stderr
    assert "--ignore-extra-columns" in refused.stderr
    lenient = mekb(env, "produce", str(items), "--no-progress", "--ignore-extra-columns")
    assert lenient.returncode == 0, lenient.stderr
    assert "sent 1 events" in lenient.stdout

    interactions = consume_all(settings, settings.topic("interactions"), 1)
    assert [parse_interaction(r.value).user_id for r in interactions] == ["u1"]
    [item] = [parse_item(r.value) for r in consume_all(settings, settings.topic("items"), 1)]
    assert item.title == "Dune"  # sent once (the refused run sent nothing), colour dropped

    again = mekb(env, "produce", str(events), "--no-progress", "--allow-rejects")
    assert again.returncode == 0 and "bad_encoding=1" in again.stdout, again.stderr


@pytest.mark.parametrize("command", [
    ("produce", "{events}", "--no-progress"),
    ("topics", "create"),
    ("trainer", "--port", "0"),
    ("worker", "--port", "0"),
    ("monitor", "--port", "0"),
])
def test_an_unreachable_broker_is_one_line_within_seconds(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"item_id": "i", "domain": "d", "title": "T", "ts": 1}) + "\n")
    port = free_port()  # nothing listens there
    env = {**os.environ, "MEKB_DATA_DIR": str(tmp_path / "data"),
           "MEKB_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    started = time.monotonic()
    result = mekb(env, *(a.format(events=events) for a in command), timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mekb: error: broker at 127.0.0.1:{port} unreachable (127.0.0.1:{port}: Connection "
        "refused); check MEKB_BOOTSTRAP_SERVERS"]
    assert elapsed < 20, f"{command[0]} took {elapsed:.1f}s"  # Python start-up included
