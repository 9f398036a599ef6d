from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from mekb.events import EventError, InteractionEvent, ItemEvent, UserDeleteEvent
from mekb.produce import ProduceError, RateLimiter, classify, read_lines


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


def test_invalid_utf8_is_rejected_not_repaired(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    good = {"event_id": "e1", "user_id": "u1", "item_id": "i", "domain": "books",
            "action": "click", "ts": 1}
    bad = json.dumps({**good, "event_id": "e2", "user_id": "uXX"}).encode().replace(
        b"uXX", b"u\xff\xfe")
    path.write_bytes(json.dumps(good).encode() + b"\n" + bad + b"\r\n")
    rows = list(read_lines(path))
    assert [line.number for line, _ in rows] == [1, 2]
    assert rows[0][0].error is None and classify(rows[0][1], "auto").user_id == "u1"  # type: ignore[union-attr]
    line = rows[1][0]
    assert line.error is not None and line.error.reason == "bad_encoding"
    assert line.raw == bad and "u\\xff\\xfe" in line.text and "\ufffd" not in line.text


def test_csv_bad_utf8_row_is_rejected_and_line_numbers_follow_quoted_newlines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(
        b"\xef\xbb\xbfitem_id,domain,title,ts,text\n"  # a spreadsheet's BOM
        b'i1,books,Dune,1,"two\nlines"\n'
        b"i2,books,D\xe9j\xe0 vu,1,\n"  # Latin-1, not UTF-8
        b"i3,books,Emma,1,\n"
    )
    rows = list(read_lines(path))
    assert [line.number for line, _ in rows] == [2, 4, 5]
    assert classify(rows[0][1], "item").text == "two\nlines"  # type: ignore[union-attr]
    assert rows[1][0].error is not None and rows[1][0].error.reason == "bad_encoding"
    assert rows[1][0].raw == b"i2,books,D\xe9j\xe0 vu,1,"
    assert rows[2][0].error is None and classify(rows[2][1], "item").title == "Emma"  # type: ignore[union-attr]


def test_unknown_csv_columns_stop_the_file_unless_ignored(tmp_path: Path) -> None:
    path = tmp_path / "ev.csv"
    path.write_text(
        "event_id,user_id,item_id,domain,action,ts,notes,item.colour\n"
        "e1,u1,i1,books,click,1,hello,red\n"
        "e2,u1,i1,books,click,1,,,surplus\n"
    )
    with pytest.raises(ProduceError, match="unknown column.*'notes', 'item.colour'"):
        list(read_lines(path))
    rows = list(read_lines(path, ignore_extra_columns=True))
    first = classify(rows[0][1], "auto")
    assert isinstance(first, InteractionEvent) and first.item is None
    assert rows[1][0].error is None  # surplus cells dropped too, when asked to
    strict = tmp_path / "strict.csv"
    strict.write_text("event_id,user_id,item_id,domain,action,ts\n"
                      "e1,u1,i1,books,click,1\n"
                      "e2,u1,i1,books,click,1,surplus\n")
    rows = list(read_lines(strict))
    assert rows[0][0].error is None
    assert rows[1][0].error is not None and rows[1][0].error.reason == "extra_columns"
    dup = tmp_path / "dup.csv"
    dup.write_text("item_id,domain,title,ts,title\ni,d,A,1,B\n")
    with pytest.raises(ProduceError, match="repeated column.*'title'"):
        list(read_lines(dup, ignore_extra_columns=True))


def test_user_deletions_are_interactions_topic_records(tmp_path: Path) -> None:
    """A delete_user record (docs/contracts.md) is accepted by produce, backfill and
    DLQ replay alike: in JSONL and CSV, auto-detected or as kind "interaction"."""
    path = tmp_path / "ev.csv"
    path.write_text("event_id,user_id,item_id,domain,action,ts,type\n"
                    "e1,u1,i1,books,click,1700000000,\n"
                    ",u1,,,,1700000005,delete_user\n")
    first, second = (classify(raw, "auto") for _, raw in read_lines(path))
    assert isinstance(first, InteractionEvent)
    assert isinstance(second, UserDeleteEvent) and second.user_id == "u1"
    line = '{"type": "delete_user", "user_id": "u2", "ts": 1700000009}'
    assert isinstance(classify(line, "interaction"), UserDeleteEvent)
    with pytest.raises(EventError) as err:
        classify('{"type": "delete_everything", "user_id": "u2", "ts": 1}', "auto")
    assert err.value.field == "type"
