"""mekb.backfill's ordering without a broker (the whole path: tests/integration/
test_backfill.py) and mekb.dlq's argument parsing."""

from __future__ import annotations

import gzip
import heapq
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from mekb.backfill import BackfillError, Rejects, discover, events, read_run, scan, sort_runs
from mekb.dlq import DlqError, parse_id, parse_time, read_corrections


def event(n: int, ts: float, user: str = "u1") -> str:
    return json.dumps({"event_id": f"e{n}", "user_id": user, "item_id": "i1",
                       "domain": "action", "action": "click", "ts": ts})


def test_discover_takes_event_files_of_every_compression(tmp_path: Path) -> None:
    for name in ("a.jsonl", "b.csv.gz", "sub/c.ndjson.xz", "d.json.bz2", "notes.txt",
                 ".hidden.jsonl", "a.jsonl.rejected"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path)] == [
        "a.jsonl", "b.csv.gz", "d.json.bz2", "sub/c.ndjson.xz"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackfillError, match="no event files"):
        discover(tmp_path / "empty")
    with pytest.raises(BackfillError, match="no such file"):
        discover(tmp_path / "missing")


def test_scan_finds_the_first_line_out_of_order_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    lines = [event(0, 10), event(1, 12), "{broken", event(2, 11), event(3, 13),
             json.dumps({"item_id": "i1", "domain": "d", "title": "T", "ts": 9})]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    (s,) = scan([path], "auto", False, progress=False)
    assert (s.lines, s.interactions, s.items) == (6, 4, 1)
    assert s.unsorted == (4, 11.0, 2, 12.0)  # line 4 is earlier than line 2
    assert (s.first_ts, s.last_ts) == (9.0, 13.0)
    # validation happens when the events are read for sending; each reject written once
    rejects = Rejects(tmp_path / "r.jsonl", Counter())
    for _ in range(2):  # a file is read once per phase
        assert len(list(events(path, 0, "auto", False, rejects))) == 5
    rejects.close()
    (entry,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert entry["line"] == 3 and entry["reason"] == "bad_json" and entry["file"] == str(path)
    assert rejects.counts == {"bad_json": 1}


def test_sorted_runs_merge_into_event_time_order(tmp_path: Path) -> None:
    rng = random.Random(3)
    times = [float(rng.randint(0, 50)) for _ in range(230)]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(event(n, ts) for n, ts in enumerate(times)) + "\n")
    runs = sort_runs(path, 0, "auto", False, tmp_path, run_size=40)
    assert len(runs) == 6
    merged = list(heapq.merge(*(read_run(r, 0) for r in runs)))
    assert [m[0] for m in merged] == sorted(times)
    # equal times keep the file's line order, and the records are the events themselves
    assert [m[2] for m in merged] == sorted(range(1, 231), key=lambda n: (times[n - 1], n))
    assert json.loads(merged[0][5])["ts"] == min(times) and merged[0][4] == b"u1"


def test_dlq_arguments() -> None:
    assert parse_id(" 3:17 ") == (3, 17)
    with pytest.raises(DlqError, match="PARTITION:OFFSET"):
        parse_id("17")
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000.0
    with pytest.raises(DlqError, match="an age such as"):
        parse_time("yesterday")


def test_corrections_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "fix.jsonl"
    path.write_text('{"id": "0:1", "event": {"a": 1}}\n\n{"id": "1:2", "event": "{}"}\n')
    assert sorted(read_corrections(path)) == ["0:1", "1:2"]
    path.write_text('{"id": "0:1", "event": {}}\n{"id": "0:1", "event": {}}\n')
    with pytest.raises(DlqError, match="corrected twice"):
        read_corrections(path)
    path.write_text('{"event": {}}\n')
    with pytest.raises(DlqError, match="line 1: expected an object with `id`"):
        read_corrections(path)
