"""The MeKB agent's batch core, in-process: dedupe, parking, eviction, df, examples."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from mekb.scoring import idf, mekb_scores, rank
from streams.catalog import ItemCatalog, LinkedItem
from streams.codec import UserState
from streams.config import StreamConfig
from streams.dftable import DfTable
from streams.partition import FlushPlan, InRecord, MeKBPartition, store_prefix
from streams.state.memory import MemoryStore


def item(item_id: str, *entities: tuple[str, float], domain: str = "action") -> LinkedItem:
    return LinkedItem(item_id, domain, tuple((e, e.split(":")[1], w) for e, w in entities), "d")


def ev(event_id: str, user: str, item_id: str, *, domain: str = "action", key: str | None = None,
       **extra: object) -> InRecord:
    body = {"event_id": event_id, "user_id": user, "item_id": item_id, "domain": domain,
            "action": "click", "ts": 100.0, **extra}
    return InRecord(0, (key or user).encode(), json.dumps(body).encode())


def numbered(records: list[InRecord], start: int = 0) -> list[InRecord]:
    return [InRecord(start + i, r.key, r.value) for i, r in enumerate(records)]


class Harness:
    """One partition over a memory store; applies plans like the worker does."""

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.store = MemoryStore()
        self.catalog = ItemCatalog()
        self.df = DfTable()
        self.config = config or StreamConfig(target_domains=frozenset({"action"}))
        self.part = self.new_partition()
        self.offset = 0  # input offsets continue across batches, as in a partition

    def new_partition(self) -> MeKBPartition:
        part = MeKBPartition(0, self.store, self.config, self.catalog, self.df)
        part.load()
        return part

    def run(self, records: list[InRecord], now: float = 1000.0,
            offset: int | None = None) -> FlushPlan:
        start = self.offset if offset is None else offset
        self.offset = max(self.offset, start + len(records))
        plan = self.part.process(numbered(records, start), self.catalog.take_fresh(), now)
        self.store.write({store_prefix(0) + k: v for k, v in plan.changes.items()})
        for key, value in plan.df_partials:
            self.df.apply(key, value)
        return plan

    def counts(self, user: str) -> dict[str, float]:
        raw = self.store.get(store_prefix(0) + b"u\x00" + user.encode())
        return UserState.decode(raw).counts if raw else {}

    def outputs(self, plan: FlushPlan, topic: str) -> list[dict[str, object]]:
        return [json.loads(o.value) for o in plan.outputs if o.topic == topic]


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.catalog.put(item("i1", ("kb:Nolan", 1.0), ("category:SciFi", 0.3)))
    harness.catalog.put(item("i2", ("kb:Nolan", 1.0), ("brand:WB", 0.5)))
    harness.catalog.take_fresh()
    return harness


def test_counts_are_weighted_sums_and_duplicates_change_nothing(h: Harness) -> None:
    plan = h.run([ev("e1", "u", "i1"), ev("e2", "u", "i2", weight=2.0), ev("e1", "u", "i1")])
    assert h.counts("u") == {"kb:Nolan": 3.0, "category:SciFi": 0.3, "brand:WB": 1.0}
    assert plan.outcomes["applied"] == 2 and plan.outcomes["duplicate"] == 1
    again = h.run([ev("e2", "u", "i2", weight=2.0)])  # redelivered in a later batch
    assert again.outcomes["duplicate"] == 1
    assert h.counts("u")["kb:Nolan"] == 3.0
    updates = h.outputs(plan, "mekb-updates")
    assert len(updates) == 1 and updates[0]["version"] == 2  # one update per user per batch
    assert [e["id"] for e in updates[0]["entities"]][0] == "kb:Nolan"


def test_negative_and_malformed_events(h: Harness) -> None:
    plan = h.run([
        ev("e1", "u", "i1", rating=2.0),               # below the positive threshold
        InRecord(0, b"u", b"{not json"),
        ev("e2", "u", "i1", key="someone-else"),        # key must be the user id
        InRecord(0, b"u", b"x" * (70 * 1024)),
    ])
    assert plan.outcomes["ignored"] == 1
    assert plan.dead_letters == Counter({"bad_json": 1, "key_mismatch": 1, "oversized": 1})
    letters = h.outputs(plan, "dead-letters")
    assert {d["reason"] for d in letters} == {"bad_json", "key_mismatch", "oversized"}
    import base64
    assert base64.b64decode(letters[0]["original"]) == b"{not json"
    assert h.counts("u") == {}


def test_unknown_item_is_parked_then_applied_without_example(h: Harness) -> None:
    plan = h.run([ev("e1", "u", "i9", item={"title": "Heat"}), ev("e1", "u", "i9")])
    assert plan.outcomes == Counter({"parked": 1, "duplicate": 1})
    assert [o.topic for o in plan.outputs] == ["items"]  # inline item forwarded once
    assert h.part.parked_count == 1
    # A restart before the item arrives keeps the parked event (it is state).
    h.part = h.new_partition()
    assert h.part.parked_count == 1
    h.catalog.put(item("i9", ("kb:Heat", 1.0)))
    plan = h.run([])
    assert plan.outcomes["unparked"] == 1 and h.part.parked_count == 0
    assert h.counts("u") == {"kb:Heat": 1.0}
    assert h.outputs(plan, "training-examples") == []  # applied late: no point-in-time example


def test_parked_event_expires_to_dead_letter(h: Harness) -> None:
    h.run([ev("e1", "u", "i9")], now=1000.0)
    plan = h.run([], now=1000.0 + h.config.park_ttl_s + 1)
    assert plan.dead_letters == Counter({"item_unknown": 1})
    assert h.part.parked_count == 0


def test_park_is_bounded() -> None:
    h = Harness(StreamConfig(park_max=1))
    plan = h.run([ev("e1", "u", "i8"), ev("e2", "u", "i9")])
    assert plan.outcomes["parked"] == 1 and plan.dead_letters == Counter({"park_full": 1})


def test_training_example_is_the_mekb_before_the_event(h: Harness) -> None:
    h.catalog.put(item("d1", ("kb:Drama", 1.0), domain="drama"))
    plan = h.run([ev("e0", "u", "d1", domain="drama"), ev("e1", "u", "i1"),
                  ev("e2", "u", "i2")])
    examples = h.outputs(plan, "training-examples")
    assert [x["example_id"] for x in examples] == ["e1", "e2"]  # target domain only
    assert {e["id"]: e["k"] for e in examples[0]["entities"]} == {"kb:Drama": 1.0}
    assert {e["id"]: e["k"] for e in examples[1]["entities"]} == {
        "kb:Drama": 1.0, "kb:Nolan": 1.0, "category:SciFi": 0.3}
    assert examples[1]["mekb_version"] == 2
    assert abs(sum(e["score"] for e in examples[1]["entities"]) - 1.0) < 1e-9


def test_df_and_n_are_exact_with_eviction() -> None:
    h = Harness(StreamConfig(max_entities=2))
    h.catalog.put(item("a", ("kb:A", 1.0), ("kb:B", 0.5)))
    h.catalog.put(item("c", ("kb:C", 1.0)))
    h.catalog.put(item("x", ("kb:A", 1.0)))
    h.run([ev("1", "u", "a"), ev("2", "v", "x")])
    assert h.df.df == {"kb:A": 2, "kb:B": 1} and h.df.n_users == 2
    h.run([ev("3", "u", "c"), ev("4", "u", "c")])  # C (k=2) evicts B (k=0.5)
    assert h.counts("u") == {"kb:A": 1.0, "kb:C": 2.0}
    assert h.df.df == {"kb:A": 2, "kb:C": 1} and h.df.n_users == 2
    # The partials are exact after a reload from the store, and re-published idempotently.
    h.part = h.new_partition()
    for key, value in h.part.df_snapshot():
        h.df.apply(key, value)
    assert h.df.df == {"kb:A": 2, "kb:C": 1} and h.df.n_users == 2


def _evict_by_sorting(counts: dict[str, float], entities: list[tuple[str, str, float]],
                      weight: float, max_entities: int) -> None:
    """The definition of top-M eviction: sort every (k, id) pair, drop the lowest."""
    for entity_id, _, entity_weight in entities:
        counts[entity_id] = counts.get(entity_id, 0.0) + weight * entity_weight
    excess = len(counts) - max_entities
    if excess > 0:
        for _, entity_id in sorted(zip(counts.values(), counts, strict=True))[:excess]:
            del counts[entity_id]


@pytest.mark.parametrize("seed", range(5))
def test_heap_eviction_matches_sorting_every_pair(seed: int) -> None:
    # Ties on k are frequent (few distinct weights), re-added evicted entities get a
    # fresh small k, and the state is re-decoded now and then (the heap is rebuilt).
    rng = random.Random(seed)
    state, reference = UserState(), {}
    weights = (1.0, 0.5, 0.3, 0.1)
    for step in range(3000):
        entities = [(f"kb:{rng.randrange(60)}", "t", rng.choice(weights))
                    for _ in range(rng.randint(1, 6))]
        weight = rng.choice((1.0, 2.0, 0.5))
        state.add(entities, weight, 20)
        _evict_by_sorting(reference, entities, weight, 20)
        assert state.counts == reference, step
        if step % 500 == 499:
            state = UserState.decode(state.encode())


# n_users 1: every idf is 0 (rank's fallback); limit: MEKB_EXAMPLE_ENTITIES (0 = all).
@pytest.mark.parametrize(("n_users", "limit"), [(1, 0), (6, 0), (1, 3), (6, 3)])
def test_memoised_example_entities_equal_scoring_from_scratch(n_users: int, limit: int) -> None:
    # Two partitions over the same events: one as shipped, one scoring every example
    # from scratch with `scored` (mekb.scoring.rank) and cutting that list; the examples
    # must be byte-equal.
    rng = random.Random(n_users)
    config = StreamConfig(max_entities=8, target_domains=frozenset({"action"}),
                          example_entities=limit)
    memo, plain = Harness(config), Harness(config)
    plain.part.example_entities = (  # type: ignore[method-assign]
        lambda _user, counts: plain.part.scored(counts)[:limit or None])
    for i in range(30):
        linked = item(f"i{i}", *[(f"kb:E{rng.randrange(25)}", rng.choice((1.0, 0.5, 0.3)))
                                 for _ in range(rng.randint(1, 4))])
        memo.catalog.put(linked)
        plain.catalog.put(linked)
    examples = 0
    for batch in range(6):
        records = [ev(f"b{batch}e{j}", f"u{rng.randrange(n_users)}", f"i{rng.randrange(30)}",
                      domain=rng.choice(("action", "book")))
                   for j in range(120)]
        got, want = memo.run(records), plain.run(records)
        mine = [o.value for o in got.outputs if o.topic == "training-examples"]
        assert mine == [o.value for o in want.outputs if o.topic == "training-examples"]
        examples += len(mine)
        for value in map(json.loads, mine):
            size, entities = value["mekb_size"], value["entities"]
            assert len(entities) == (min(limit, size) if limit else size)
            if limit and size > limit and n_users > 1:  # scores of the whole MeKB, cut
                assert sum(e["score"] for e in entities) < 1.0
    assert examples > 200


def test_dedupe_window_survives_reload_and_is_bounded() -> None:
    h = Harness(StreamConfig(dedupe_window=2))
    h.catalog.put(item("i", ("kb:A", 1.0)))
    h.run([ev("e1", "u", "i"), ev("e2", "u", "i")])
    h.part = h.new_partition()
    assert h.run([ev("e2", "u", "i")]).outcomes["duplicate"] == 1
    h.run([ev("e3", "u", "i")])  # e1 falls out of a window of 2
    assert h.run([ev("e1", "u", "i")]).outcomes["applied"] == 1


def test_dftable_ignores_stale_partials() -> None:
    table = DfTable()
    table.apply_partial(0, "kb:A", 5, 3)
    table.apply_partial(1, "kb:A", 1, 2)
    table.apply_partial(0, "kb:A", 4, 9)  # older sequence number: ignored
    table.apply_partial(0, "kb:A", 5, 3)  # re-published: no change
    assert table.df == {"kb:A": 5}
    table.apply_partial(0, "kb:A", 6, 0)
    table.apply_partial(0, "kb:A", 5, 3)
    assert table.df == {"kb:A": 2}


def test_user_state_roundtrip() -> None:
    state = UserState(3, 12.5, {"kb:A": 1.5}, [1, 2**64 - 1], ["i1"])
    back = UserState.decode(state.encode())
    assert (back.version, back.ts, back.counts, back.recent, back.seen) == (
        3, 12.5, {"kb:A": 1.5}, [1, 2**64 - 1], ["i1"])
    assert back.seen_event(2**64 - 1) and not back.seen_event(5)


def test_hot_path_scoring_equals_the_shared_formula() -> None:
    """The worker scores with `rank` and a memoised idf; the result must be exactly what
    `mekb_scores` gives (ties by id, s(k) above K*, all-zero idf fallback)."""
    rng = random.Random(3)
    for _ in range(300):
        counts = {f"kb:e{rng.randint(0, 60)}": rng.choice((0.0, 1.0, 2.0, 7.5, rng.random() * 30))
                  for _ in range(rng.randint(0, 40))}
        df = {e: rng.randint(1, 9) for e in counts}
        n = rng.choice((1, 9, 50))
        memo = {e: idf(df[e], n) for e in counts}
        want = [(s.entity_id, s.score) for s in mekb_scores(counts, df, n, 5.0)]
        assert rank(counts, memo.__getitem__, 5.0) == want


def test_partition_scores_with_the_df_it_sees() -> None:
    table = DfTable()
    table.apply_partial(1, "kb:A", 1, 3)  # another partition's users
    table.apply_partial(1, "", 1, 4)
    part = MeKBPartition(0, MemoryStore(), StreamConfig(), ItemCatalog(), table)
    part.df_p, part.n_p = {"kb:A": 1, "kb:B": 1}, 2
    got = part.scored({"kb:A": 2.0, "kb:B": 1.0})
    want = mekb_scores({"kb:A": 2.0, "kb:B": 1.0}, {"kb:A": 4, "kb:B": 1}, 6)
    assert [(x["id"], x["score"]) for x in got] == [(s.entity_id, s.score) for s in want]


def test_a_replayed_batch_changes_nothing_even_beyond_the_event_id_window() -> None:
    """A crash after the changelog write but before the offset commit replays the batch;
    the consumed input offset (changelogged in the partition meta) drops it, however
    many events of one user it holds."""
    h = Harness(StreamConfig(target_domains=frozenset({"action"}), dedupe_window=2))
    h.catalog.put(item("i1", ("kb:Nolan", 1.0)))
    batch = [ev(f"e{n}", "u", "i1") for n in range(10)]
    h.run(batch)
    assert h.counts("u") == {"kb:Nolan": 10.0}
    h.part = h.new_partition()  # restarted from the store (= restored from the changelog)
    replay = h.run(batch + [ev("e10", "u", "i1")], offset=0)
    assert replay.outcomes["duplicate"] == 10 and replay.outcomes["applied"] == 1
    assert h.counts("u") == {"kb:Nolan": 11.0}
    assert not [o for o in h.outputs(replay, "training-examples") if o["example_id"] != "e10"]


def test_item_agent_relinks_a_changed_item_only() -> None:
    from mekb.events import ItemEvent
    from streams.items import item_digest, prepare

    catalog = ItemCatalog()
    body = {"item_id": "i1", "domain": "action", "title": "Inception", "ts": 1.0}
    first = ItemEvent.model_validate(body)
    catalog.put(LinkedItem("i1", "action", (("kb:Inception", "Inception", 1.0),),
                           item_digest(first)))

    def rec(offset: int, **change: object) -> InRecord:
        return InRecord(offset, b"i1", json.dumps({**body, **change}).encode(), "items")

    same = prepare([rec(0, ts=9.0)], 0, catalog)  # only the time moved
    assert not same.to_link and same.outcomes["unchanged"] == 1
    changed = prepare([rec(1, title="Old"), rec(2, title="Inception 2"),
                       InRecord(3, b"i1", b"{", "items")], 0, catalog)
    assert [i.title for i in changed.to_link] == ["Inception 2"]  # the batch's latest wins
    assert changed.outcomes["dead_letter"] == 1 and changed.next_offset == 4


def test_examples_default_to_what_the_trainers_model_reads() -> None:
    from mekb.settings import Settings

    # A model of max_tokens reads at most max_tokens // 2 titles (sequence_text).
    assert StreamConfig.from_settings(Settings(trainer_max_tokens=64)).example_entities == 32
    assert StreamConfig.from_settings(Settings()).example_entities == 64
    assert StreamConfig.from_settings(
        Settings(trainer_max_tokens=64, example_entities=0)).example_entities == 0


def test_mekb_updates_score_with_the_df_and_n_after_the_batch() -> None:
    # The idf view outlives the end of a batch (df_p and N move there); every update
    # must equal the scores of a partition rebuilt from the store, whose view is new.
    rng = random.Random(7)
    h = Harness(StreamConfig(max_entities=6))
    h.df.apply_partial(1, "kb:E3", 1, 4)  # another partition's users
    h.df.apply_partial(1, "", 1, 9)
    for i in range(20):
        h.catalog.put(item(f"i{i}", *[(f"kb:E{rng.randrange(12)}", 1.0)
                                      for _ in range(rng.randint(1, 3))]))
    updates = 0
    for batch in range(5):
        plan = h.run([ev(f"b{batch}e{j}", f"u{rng.randrange(8 + 4 * batch)}",
                         f"i{rng.randrange(20)}") for j in range(40)])
        fresh = h.new_partition()
        for update in h.outputs(plan, "mekb-updates"):
            want = fresh.scored(fresh.user(str(update["user_id"])).counts)
            assert update["entities"] == want and update["n_users"] == fresh.n_users()
            updates += 1
    assert updates > 30


def test_a_batch_runs_without_cyclic_gc_and_leaves_it_as_it_was() -> None:
    import gc

    h = Harness()
    h.catalog.put(item("i", ("kb:A", 1.0)))
    during: list[bool] = []
    apply = h.part._apply

    def spy(*args: Any, **kwargs: Any) -> None:
        during.append(gc.isenabled())
        apply(*args, **kwargs)

    h.part._apply = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    h.run([ev("e1", "u", "i")])
    assert during == [False] and gc.isenabled()
    gc.disable()
    try:
        h.run([ev("e2", "u", "i")])
        assert not gc.isenabled()  # an application that disabled it keeps it disabled
    finally:
        gc.enable()
    h.part._apply = None  # type: ignore[assignment,method-assign]
    with pytest.raises(TypeError):
        h.run([ev("e3", "u", "i")])
    assert gc.isenabled()
