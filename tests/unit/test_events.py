from __future__ import annotations

import json

import pytest

from mekb.events import (
    MAX_EVENT_BYTES,
    EventError,
    InteractionEvent,
    ItemEvent,
    encode,
    event_key,
    parse_interaction,
    parse_item,
)

GOOD_INTERACTION = {
    "event_id": "e1", "user_id": "u1", "item_id": "i1", "domain": "books",
    "action": "click", "ts": 1700000000,
}
GOOD_ITEM = {"item_id": "i1", "domain": "books", "title": "Dune", "ts": 1700000000}


def test_valid_interaction_round_trips_through_bytes() -> None:
    event = parse_interaction(json.dumps(GOOD_INTERACTION).encode())
    assert isinstance(event, InteractionEvent)
    assert event.weight == 1.0 and event.v == 1
    assert parse_interaction(encode(event)) == event
    assert event_key(event) == b"u1"


def test_valid_item_round_trips_and_keys_by_item() -> None:
    event = parse_item({**GOOD_ITEM, "brand": "Ace", "categories": ["Sci-Fi", "Novels"]})
    assert isinstance(event, ItemEvent)
    assert parse_item(encode(event)) == event
    assert event_key(event) == b"i1"


def test_iso_time_is_accepted_as_epoch_seconds() -> None:
    event = parse_interaction({**GOOD_INTERACTION, "ts": "2023-11-14T22:13:20Z"})
    assert event.ts == 1700000000.0


def test_inline_item_becomes_item_event() -> None:
    event = parse_interaction({**GOOD_INTERACTION, "item": {"title": "Dune", "brand": "Ace"}})
    item = event.inline_item()
    assert item is not None and item.item_id == "i1" and item.brand == "Ace"
    assert item.domain == "books"


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"event_id": None}, "event_id", "bad_value"),
        ({"user_id": "x" * 129}, "user_id", "too_long"),
        ({"item_id": ""}, "item_id", "empty"),
        ({"domain": "Books!"}, "domain", "bad_value"),
        ({"action": "x" * 33}, "action", "too_long"),
        ({"ts": "yesterday"}, "ts", "bad_value"),
        ({"ts": -5}, "ts", "bad_value"),
        ({"weight": 0}, "weight", "bad_value"),
        ({"weight": float("nan")}, "weight", "bad_value"),
        ({"rating": 11}, "rating", "bad_value"),
        ({"v": 2}, "v", "bad_version"),
        ({"colour": "red"}, "colour", "unknown_field"),
        ({"item": {"title": "t" * 513}}, "item.title", "too_long"),
    ],
)
def test_bad_interaction_names_the_field(patch: dict, field: str, reason: str) -> None:
    with pytest.raises(EventError) as info:
        parse_interaction({**GOOD_INTERACTION, **patch})
    assert info.value.field == field
    assert info.value.reason == reason
    assert field in str(info.value)


@pytest.mark.parametrize("missing", ["event_id", "user_id", "item_id", "domain", "action", "ts"])
def test_missing_interaction_field_is_named(missing: str) -> None:
    raw = {k: v for k, v in GOOD_INTERACTION.items() if k != missing}
    with pytest.raises(EventError) as info:
        parse_interaction(raw)
    assert (info.value.field, info.value.reason) == (missing, "missing_field")


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"title": ""}, "title", "empty"),
        ({"title": "t" * 513}, "title", "too_long"),
        ({"text": "t" * 8193}, "text", "too_long"),
        ({"brand": "b" * 257}, "brand", "too_long"),
        ({"categories": ["c"] * 33}, "categories", "too_long"),
        ({"categories": ["c" * 257]}, "categories.0", "too_long"),
    ],
)
def test_bad_item_names_the_field(patch: dict, field: str, reason: str) -> None:
    with pytest.raises(EventError) as info:
        parse_item({**GOOD_ITEM, **patch})
    assert (info.value.field, info.value.reason) == (field, reason)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_encoding"),
        (b"[1, 2]", "not_object"),
        (b" " * (MAX_EVENT_BYTES + 1), "oversized"),
    ],
)
def test_undecodable_bytes_are_typed(raw: bytes, reason: str) -> None:
    with pytest.raises(EventError) as info:
        parse_interaction(raw)
    assert info.value.field == "event"
    assert info.value.reason == reason
