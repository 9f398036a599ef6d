"""`mekb backfill` against the real broker and a real worker process: a compressed,
partly unsorted history (JSONL and CSV, duplicates and malformed lines) ends in exactly
the state the same events give when streamed live (the reference of the streams tests),
with point-in-time training examples the trainer reads."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from mekb.broker import free_port
from mekb.settings import Settings
from mekb.topics import create_topics
from streams.synthetic import EventLog, generate, reference_counts, reference_df
from tests.integration.streams_helpers import (
    Worker,
    read_topic,
    state_diff,
    wait_exact,
    worker_env,
)
from tests.integration.test_streams_worker import linked
from trainer.online.examples import parse_example

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_history(log: EventLog, root: Path) -> None:
    """Items in a gzipped JSONL file; interactions split over a bz2 JSONL file (with the
    duplicates and malformed lines, so not in event-time order) and an xz CSV file; a
    file of junk."""
    root.mkdir()
    with gzip.open(root / "items.jsonl.gz", "wt") as fh:
        for item in log.items + log.late_items:
            fh.write(json.dumps(item) + "\n")
    as_csv = io.StringIO()
    columns = ["event_id", "user_id", "item_id", "domain", "action", "ts", "rating"]
    writer = csv.DictWriter(as_csv, columns)
    writer.writeheader()
    jsonl = []
    for n, value in enumerate(log.interactions):
        try:
            event = json.loads(value)
        except ValueError:
            event = None
        if isinstance(event, dict) and "user_id" in event and n % 3 == 0:
            writer.writerow(event)
        else:
            jsonl.append(value)
    (root / "clicks-a.jsonl.bz2").write_bytes(bz2.compress(b"\n".join(jsonl) + b"\n"))
    (root / "clicks-b.csv.xz").write_bytes(lzma.compress(as_csv.getvalue().encode()))
    (root / "junk.jsonl").write_text("{nope\n[]\n")  # nothing valid: only rejects


def backfill(settings: Settings, alias: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(settings, alias, "cli", free_port())
    return subprocess.run([sys.executable, "-m", "mekb.cli.main", "backfill", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_backfill_equals_the_live_stream_with_point_in_time_examples(
    settings: Settings, alias: Path, tmp_path: Path
) -> None:
    s = Settings(**{**settings.model_dump(), "mekb_max_entities": 100_000,
                    "example_entities": 0})
    create_topics(s)
    log = generate(n_users=40, n_items=60, n_events=1500, n_entities=120, seed=21,
                   dup_rate=0.05, malformed_rate=0.01, late_rate=0.1)
    history = tmp_path / "history"
    write_history(log, history)
    malformed = sum(1 for v in log.interactions if not v.startswith(b'{"event_id": "e'))
    assert malformed > 0

    # An unsorted file is refused before anything is sent.
    refused = backfill(s, alias, str(history), "--no-progress")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("mekb: error: ") and "clicks-a.jsonl.bz2" in refused.stderr
    assert "not in event-time order" in refused.stderr and "nothing was sent" in refused.stderr
    assert not read_topic(s, "items", idle_s=0.5)
    # With no worker consuming, the flow control gives up after --stall-timeout.
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps(item) + "\n" for item in log.items[:3]))
    stalled = backfill(s, alias, str(few), "--stall-timeout", "2", "--no-progress")
    assert stalled.returncode == 1 and "consumed nothing" in stalled.stderr, stalled.stderr
    assert f"consumer group {s.topic('mekb-items')}" in stalled.stderr

    ents = linked(s, alias, log)
    ref = reference_counts(log.valid, lambda i: ents[i])
    worker = Worker(s, alias, "w1", tmp_path / "w1.log")
    try:
        worker.wait_ready()
        # --sort in runs of 100 events: the bz2 file becomes several sorted runs; a small
        # --max-lag makes the producer wait for the worker many times.
        done = backfill(s, alias, str(history), "--sort", "--run-size", "100",
                        "--max-lag", "200", "--no-progress")
        assert done.returncode == 3, done.stdout + done.stderr  # malformed lines rejected
        valid_sent = len(log.interactions) - malformed
        assert (f"sent {valid_sent + len(log.items) + len(log.late_items)} events"
                in done.stdout), done.stdout
        assert "the worker applied all of it" in done.stdout
        rejects = [json.loads(x) for x in
                   (tmp_path / "history.rejected").read_text().splitlines()]
        assert len(rejects) == malformed + 2
        assert {Path(r["file"]).name for r in rejects} == {"clicks-a.jsonl.bz2", "junk.jsonl"}
        # Everything was applied when the command returned.
        assert state_diff(s, ref, *reference_df(ref)) == ""
        wait_exact(s, ref, *reference_df(ref), timeout_s=10)
    finally:
        assert worker.stop() == 0
    check_point_in_time(s, log, ents)


def check_point_in_time(settings: Settings, log: EventLog,
                        ents: dict[str, list[tuple[str, float]]]) -> None:
    """Every positive target-domain event has one example, whose MeKB is exactly the
    user's earlier events (items were all known first, so none was parked), and the
    trainer's parser reads each."""
    examples = {}
    for rec in read_topic(settings, "training-examples"):
        example = json.loads(rec.value)
        examples[example["example_id"]] = example
        assert parse_example(rec.value).user_id == example["user_id"]
    wanted = [e for e in log.valid
              if e["domain"] == "action" and float(e["rating"]) >= 4.0]  # type: ignore[arg-type]
    assert set(examples) == {str(e["event_id"]) for e in wanted}
    for pos, event in enumerate(log.valid):
        example = examples.get(str(event["event_id"]))
        if example is None:
            continue
        earlier = [e for e in log.valid[:pos] if e["user_id"] == event["user_id"]]
        want = reference_counts(earlier, lambda i: ents[i]).get(str(event["user_id"]), {})
        got = {x["id"]: x["k"] for x in example["entities"]}
        assert set(got) == set(want), event["event_id"]
        assert all(abs(got[e] - want[e]) < 1e-9 for e in want), event["event_id"]
