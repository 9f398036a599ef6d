"""`mekb dlq list|show|replay` against the real broker and a real worker process: records
the worker dead-lettered are listed with their reason and original bytes, replayed
(corrected from a file, or all of a reason as they were) and end applied in the state."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mekb.broker import free_port
from mekb.dlq import Filter, read
from mekb.settings import Settings
from mekb.topics import create_topics
from streams.synthetic import generate, reference_counts, reference_df
from tests.integration.streams_helpers import Worker, produce, wait_exact, worker_env
from tests.integration.test_streams_worker import items_pairs, linked

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def mekb(settings: Settings, alias: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(settings, alias, "cli", free_port())
    return subprocess.run([sys.executable, "-m", "mekb.cli.main", "dlq", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def wait_letters(settings: Settings, n: int, timeout_s: float = 30.0) -> list[object]:
    deadline = time.monotonic() + timeout_s
    while True:
        letters = list(read(settings, Filter()))
        if len(letters) >= n or time.monotonic() > deadline:
            return letters
        time.sleep(0.5)


def duplicates(worker: Worker) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith('mekb_streams_events_total{agent="mekb",outcome="duplicate"}'):
            return float(line.rpartition(" ")[2])
    return 0.0


def test_dead_letters_are_listed_replayed_and_applied(
    settings: Settings, alias: Path, tmp_path: Path
) -> None:
    s = Settings(**{**settings.model_dump(), "mekb_max_entities": 100_000})
    create_topics(s)
    log = generate(n_users=6, n_items=12, n_events=80, n_entities=120, seed=5)
    ents = linked(s, alias, log)
    positive = [e for e in log.valid if float(e["rating"]) >= 4.0]  # type: ignore[arg-type]
    fixed, rekeyed = positive[3], positive[7]
    broken = {**fixed, "rating": 11}  # out of range: bad_value on field rating
    pairs = []
    for key, value in zip(log.keys, log.interactions, strict=True):
        event = json.loads(value)
        if event["event_id"] == fixed["event_id"]:
            value = json.dumps(broken).encode()
        elif event["event_id"] == rekeyed["event_id"]:
            key = b"somebody-else"  # key_mismatch: the event itself is fine
        pairs.append((key, value))
    pairs.append((b"u1", b"{broken \xff"))  # bad_encoding, and no correction for it

    produce(s, "items", items_pairs(log.items + log.late_items))
    worker = Worker(s, alias, "w1", tmp_path / "w1.log")
    try:
        worker.wait_ready()
        worker.wait_items(len(log.items) + len(log.late_items))
        produce(s, "interactions", pairs)
        letters = wait_letters(s, 3)
        assert sorted(d.reason for d in letters) == ["bad_encoding", "bad_value", "key_mismatch"]
        # Before any replay: the state lacks exactly the two dead-lettered events.
        without = [e for e in log.valid if e["event_id"] not in
                   (fixed["event_id"], rekeyed["event_id"])]
        ref = reference_counts(without, lambda i: ents[i])
        wait_exact(s, ref, *reference_df(ref))

        listed = mekb(s, alias, "list", "--reason", "bad_value")
        assert listed.returncode == 0 and not listed.stderr, listed.stderr
        bad = next(d for d in letters if d.reason == "bad_value")
        assert f'{bad.id} ' in listed.stdout and f'"event_id": "{fixed["event_id"]}"' in \
            listed.stdout
        assert "1 dead letters (bad_value=1)" in listed.stdout
        as_json = [json.loads(x) for x in mekb(s, alias, "list", "--json").stdout.splitlines()]
        garbage = next(d for d in as_json if d["reason"] == "bad_encoding")
        assert garbage["original"] == "{broken \\xff"  # escaped for the terminal
        assert garbage["original_base64"] == "e2Jyb2tlbiD/"  # and exact
        assert not mekb(s, alias, "list", "--since", "1h", "--until", "30m").stdout.startswith(
            "ID")  # nothing dead-lettered an hour ago
        shown = mekb(s, alias, "show", bad.id)
        assert shown.returncode == 0, shown.stderr
        assert "bad_value" in shown.stdout and "rating" in shown.stdout
        assert json.dumps(broken) in shown.stdout

        fix = tmp_path / "fix.jsonl"
        fix.write_text(json.dumps({"id": bad.id, "event": fixed}) + "\n")
        dry = mekb(s, alias, "replay", "--file", str(fix), "--dry-run")
        assert dry.returncode == 0 and "would replay 1" in dry.stdout, dry.stdout + dry.stderr
        assert f"{bad.id} -> {s.topic('interactions')}: " in dry.stdout
        replayed = mekb(s, alias, "replay", "--file", str(fix))
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed 1 (1 to {s.topic('interactions')})" in replayed.stdout
        by_reason = mekb(s, alias, "replay", "--reason", "key_mismatch")
        assert by_reason.returncode == 0 and "replayed 1" in by_reason.stdout, by_reason.stderr
        # bad bytes cannot be replayed as it is: refused, counted, exit 3
        still = mekb(s, alias, "replay", "--reason", "bad_encoding")
        assert still.returncode == 3 and "invalid:bad_encoding=1" in still.stdout, still.stdout
        assert "mekb: " in still.stderr and "still invalid" in still.stderr

        ref = reference_counts(log.valid, lambda i: ents[i])
        wait_exact(s, ref, *reference_df(ref))

        # Idempotent: a second replay skips what the ledger has, --force re-sends and the
        # worker drops the copy by its event_id.
        again = mekb(s, alias, "replay", "--file", str(fix))
        assert again.returncode == 0 and "replayed 0; skipped already_replayed=1" in \
            again.stdout, again.stdout
        dups = duplicates(worker)
        forced = mekb(s, alias, "replay", "--file", str(fix), "--force")
        assert forced.returncode == 0 and "replayed 1" in forced.stdout
        deadline = time.monotonic() + 30
        while duplicates(worker) <= dups:
            assert time.monotonic() < deadline, "the forced copy never reached the worker"
            time.sleep(0.3)
        wait_exact(s, ref, *reference_df(ref), timeout_s=10)
        # A correction that is still wrong is not sent.
        fix.write_text(json.dumps({"id": bad.id, "event": {**fixed, "domain": "Bad!"}}) + "\n")
        wrong = mekb(s, alias, "replay", "--file", str(fix), "--force")
        assert wrong.returncode == 3 and "invalid:bad_value=1" in wrong.stdout
        unknown = mekb(s, alias, "show", "1:999999")
        assert unknown.returncode == 1 and unknown.stderr.startswith("mekb: error: no dead")
    finally:
        assert worker.stop() == 0
