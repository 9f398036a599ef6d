"""Offsets tied to the topic id they were read from (mekb/topics.py), in-process: the
worker's partition rebase and seed records, the serving replica's rebase, the trainer's.
The real broker path (a new broker = new topic ids) is in
tests/integration/test_restart_incarnation.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mekb.topics import rebase_needed
from serving.replica import Incoming, Replica
from streams.catalog import ItemCatalog, LinkedItem
from streams.codec import loads
from streams.config import StreamConfig
from streams.dftable import DfTable
from streams.partition import LOCAL, META, SEEDED, InRecord, MeKBPartition, store_prefix
from streams.state.memory import MemoryStore
from trainer.online.checkpoint import TrainerState
from trainer.online.resume import rebase_offsets


def test_rebase_needed_only_for_two_known_different_ids() -> None:
    assert rebase_needed("a", "b")
    assert not rebase_needed("a", "a")
    assert not rebase_needed(None, "b")  # state from before ids were recorded: adopted
    assert not rebase_needed("a", None)  # a broker without topic ids


def click(event_id: str, user: str, offset: int) -> InRecord:
    body = {"event_id": event_id, "user_id": user, "item_id": "i1", "domain": "drama",
            "action": "click", "ts": 100.0}
    return InRecord(offset, user.encode(), json.dumps(body).encode())


def partition(store: MemoryStore, catalog: ItemCatalog) -> MeKBPartition:
    part = MeKBPartition(0, store, StreamConfig(target_domains=frozenset()), catalog, DfTable())
    part.load()
    return part


def test_partition_rebase_applies_new_offsets_and_keeps_event_id_dedupe() -> None:
    store, catalog = MemoryStore(), ItemCatalog()
    catalog.put(LinkedItem("i1", "drama", (("kb:A", "A", 1.0),), "d"))
    part = partition(store, catalog)
    part.input_id = "topic-1"
    plan = part.process([click("e1", "u1", 0), click("e2", "u1", 1)])
    store.write({store_prefix(0) + k: v for k, v in plan.changes.items()})
    assert loads(plan.changes[META] or b"") == {"seq": 1, "n": 1, "next": 2, "inc": "topic-1"}

    part = partition(store, catalog)  # a restart: META says offsets 0-1 are applied
    assert part.process([click("e3", "u1", 0)]).outcomes["duplicate"] == 1
    change = part.rebase_input("topic-2")  # the new topic starts at 0 again
    assert loads(change[META] or b"") == {"seq": 1, "n": 1, "next": 0, "inc": "topic-2"}
    plan = part.process([click("e3", "u1", 0), click("e1", "u1", 1)])
    # e3 is new at offset 0; e1 was applied before the change: dropped by its event_id
    assert plan.outcomes["applied"] == 1 and plan.outcomes["duplicate"] == 1
    assert part.user("u1").counts == {"kb:A": 3.0}  # e1, e2 and e3, once each


def test_partition_seed_records_and_updates_come_from_the_store() -> None:
    store, catalog = MemoryStore(), ItemCatalog()
    catalog.put(LinkedItem("i1", "drama", (("kb:A", "A", 1.0),), "d"))
    part = partition(store, catalog)
    plan = part.process([click("e1", "u1", 0), click("e2", "u2", 1)])
    prefix = store_prefix(0)
    store.write({prefix + k: v for k, v in plan.changes.items()})
    part.changelog_id, part.updates_id, part.seeding = "c1", "m1", True
    store.write({prefix + LOCAL: part.local_value(7), prefix + SEEDED: b'{"seq": 1}'})
    assert loads(store.get(prefix + LOCAL) or b"") == {
        "changelog_next": 7, "inc": "c1", "updates_inc": "m1", "seeding": True}
    # every changelogged key, never the store's own bookkeeping or an old seed's end
    assert set(part.state_records()) == set(plan.changes)
    updates = {k: json.loads(v or b"") for k, v in part.all_updates(5.0)}
    assert set(updates) == {b"u1", b"u2"}
    assert updates[b"u1"]["version"] == 1 and updates[b"u1"]["entities"][0]["id"] == "kb:A"
    reloaded = partition(store, catalog)
    assert (reloaded.changelog_id, reloaded.updates_id, reloaded.seeding) == ("c1", "m1", True)


@pytest.mark.parametrize("path", [None, "rocks"])
def test_replica_rebase_drops_offsets_keeps_users(tmp_path: Path, path: str | None) -> None:
    replica = Replica(tmp_path / path if path else None)
    value = json.dumps({"v": 1, "user_id": "u1", "version": 3, "entities": []}).encode()
    replica.apply([Incoming(0, 41, b"u1", value), Incoming(1, 9, b"u2", value.replace(
        b'"u1"', b'"u2"'))])
    replica.set_topic_id("t1", rebase=False)
    assert replica.topic_id() == "t1" and replica.offsets() == {0: 42, 1: 10}
    replica.set_topic_id("t2", rebase=True)
    assert replica.topic_id() == "t2" and replica.offsets() == {}
    assert replica.count_users() == 2
    # the new topic's records apply by version: an older copy is ignored, a newer applies
    result = replica.apply([Incoming(0, 0, b"u1", value),
                            Incoming(0, 1, b"u1", value.replace(b'"version": 3',
                                                                b'"version": 4'))])
    assert result.older == 1 and [r.version for r in result.applied] == [4]
    assert replica.offsets() == {0: 2}
    replica.close()


def test_trainer_rebase_drops_only_that_topics_offsets() -> None:
    state = TrainerState(offsets={"t:0": 5, "t:1": 7, "other:0": 3}, topic_ids={"t": "id1"})
    live = dict(state.offsets)
    assert not rebase_offsets(state, live, "t", "id1") and live == state.offsets
    assert rebase_offsets(state, live, "t", "id2")
    assert live == {"other:0": 3} and state.topic_ids == {"t": "id2"}
    fresh = TrainerState(offsets={"t:0": 5})  # a checkpoint from before ids: adopted
    live = dict(fresh.offsets)
    assert not rebase_offsets(fresh, live, "t", "id3")
    assert live == {"t:0": 5} and fresh.topic_ids == {"t": "id3"}
    assert TrainerState.from_json(fresh.to_json()).topic_ids == {"t": "id3"}


def test_sample_ratings_are_replayed_once_per_data_directory(tmp_path: Path) -> None:
    from mekb.sample import mark_replayed, unreplayed

    ratings = tmp_path / "interactions.jsonl"
    ratings.write_text("".join(f'{{"n": {n}}}\n' for n in range(3)))
    assert unreplayed(ratings) == ratings  # the first run sends every line
    mark_replayed(ratings, 2)  # the worker applied two of them before the run stopped
    assert unreplayed(ratings).read_text() == '{"n": 2}\n'
    mark_replayed(ratings, 3)
    ratings.write_text("".join(f'{{"n": {n}}}\n' for n in range(5)))  # a larger --limit
    tail = unreplayed(ratings)
    assert tail.read_text() == '{"n": 3}\n{"n": 4}\n'
    mark_replayed(ratings, 5)
    ratings.write_text('{"n": 0}\n')  # a smaller one: nothing again, the count is kept
    assert unreplayed(ratings).read_text() == ""
    mark_replayed(ratings, 1)
    assert json.loads((tmp_path / "replayed.json").read_text()) == {"lines": 5}


def test_deliveries_count_the_applied_prefix_of_a_replayed_file() -> None:
    """Lines 1-6 of a file: 3 is a reject (never sent), 6 is not acknowledged yet;
    partition 0 applied up to offset 11 (next), partition 1 up to 5."""
    from types import SimpleNamespace

    from mekb.produce import Deliveries

    d = Deliveries()
    placed = {1: (0, 10), 2: (1, 4), 4: (1, 5), 5: (0, 11)}
    for number in range(1, 7):
        d.reached = number
        if number != 3:
            d.sending(number)
        if number in placed:
            part, offset = placed[number]
            d.landed(number, SimpleNamespace(topic="t", partition=part, offset=offset))
    assert d.ends("t") == {0: 12, 1: 6} and d.ends("other") == {}
    # line 4 (partition 1, offset 5) is the first not applied: 3 lines need nothing more
    assert d.applied_prefix("t", {0: 11, 1: 5}) == 3
    assert d.applied_prefix("t", {0: 11, 1: 6}) == 4  # 5 is at offset 11 of partition 0
    assert d.applied_prefix("t", {0: 12, 1: 6}) == 5  # 6 was never acknowledged
    assert d.applied_prefix("t", {}) == 0
    assert d.applied_prefix("other", {0: 99, 1: 99}) == 0  # applied in another topic
    d.landed(6, SimpleNamespace(topic="t", partition=1, offset=6))
    assert d.applied_prefix("t", {0: 12, 1: 7}) == 6
