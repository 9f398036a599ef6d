from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from mekb.events import EventError, InteractionEvent, ItemEvent
from mekb.produce import RateLimiter, classify, read_lines


def test_csv_rows_become_events(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    path.write_text(
        "event_id,user_id,item_id,domain,action,ts,weight,item.title,item.categories\n"
        "e1,u1,i1,books,click,1700000000,2,Dune,Sci-Fi|Novels\n"
        "e2,u1,i2,books,click,1700000001,,,\n"
    )
    rows = list(read_lines(path))
    assert [line.number for line, _ in rows] == [2, 3]
    first = classify(rows[0][1], "auto")
    assert isinstance(first, InteractionEvent)
    assert first.weight == 2.0 and first.item is not None
    assert first.item.categories == ["Sci-Fi", "Novels"]
    second = classify(rows[1][1], "auto")
    assert second.weight == 1.0 and second.item is None  # type: ignore[union-attr]


def test_gzipped_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"item_id": "i", "domain": "d", "title": "T", "ts": 1}) + "\n\n")
    rows = list(read_lines(path))
    assert len(rows) == 1
    assert isinstance(classify(rows[0][1], "auto"), ItemEvent)


def test_forced_kind_reports_missing_fields() -> None:
    with pytest.raises(EventError) as info:
        classify(json.dumps({"item_id": "i", "domain": "d", "title": "T", "ts": 1}), "interaction")
    assert info.value.reason == "missing_field"


def test_rate_limiter_paces_calls() -> None:
    limiter = RateLimiter(200.0)
    start = time.monotonic()
    for _ in range(41):
        limiter.wait()
    assert time.monotonic() - start >= 0.19  # 40 intervals of 5 ms
