"""The partition core's user deletion, decay and TTL, in-process against the
independent reference (tests/retention_reference.py): exact state, df and N, whatever
the batch boundaries and reloads from the store."""

from __future__ import annotations

import json
import random

import pytest

from mekb.events import EventError, parse_interactions_record
from streams.codec import UserState
from streams.config import StreamConfig
from streams.partition import InRecord, store_prefix
from streams.synthetic import reference_df
from tests.retention_reference import reference_states
from tests.unit.test_streams_partition import Harness, ev, item


def delete(user: str, key: str | None = None) -> InRecord:
    body = {"type": "delete_user", "user_id": user, "ts": 500.0}
    return InRecord(0, (key or user).encode(), json.dumps(body).encode())


def harness(**config: object) -> Harness:
    h = Harness(StreamConfig(target_domains=frozenset({"action"}), **config))  # type: ignore[arg-type]
    h.catalog.put(item("i1", ("kb:Nolan", 1.0), ("category:SciFi", 0.3)))
    h.catalog.put(item("i2", ("kb:Nolan", 1.0), ("brand:WB", 0.5)))
    h.catalog.put(item("i3", ("kb:Villeneuve", 1.0), ("category:SciFi", 0.3)))
    h.catalog.take_fresh()
    return h


def users_in_store(h: Harness) -> dict[str, dict[str, float]]:
    prefix = store_prefix(0) + b"u\x00"
    return {k[len(prefix):].decode(): UserState.decode(v).counts
            for k, v in h.store.scan(prefix)}


def assert_df_exact(h: Harness) -> None:
    df, n = reference_df(users_in_store(h))
    assert h.df.df == df
    assert h.df.n_users == n
    assert h.part.df_p == df and h.part.n_p == n


def test_delete_event_contract() -> None:
    parsed = parse_interactions_record(b'{"type": "delete_user", "user_id": " u1 ", "ts": 3}')
    assert parsed.user_id == "u1"  # trimmed like interactions
    for bad, field in ((b'{"type": "delete", "user_id": "u", "ts": 1}', "type"),
                       (b'{"type": "delete_user", "ts": 1}', "user_id"),
                       (b'{"type": "delete_user", "user_id": "u", "ts": 1, "x": 1}', "x")):
        with pytest.raises(EventError) as err:
            parse_interactions_record(bad)
        assert err.value.field == field


def test_delete_removes_the_user_as_if_it_never_existed() -> None:
    h = harness()
    h.run([ev("e1", "a", "i1"), ev("e2", "a", "i2"), ev("e3", "b", "i1")])
    assert h.df.df["kb:Nolan"] == 2 and h.df.n_users == 2
    plan = h.run([delete("a")])
    assert users_in_store(h) == {"b": {"kb:Nolan": 1.0, "category:SciFi": 0.3}}
    assert_df_exact(h)
    assert "brand:WB" not in h.df.df and h.df.n_users == 1
    tombstones = [(o.topic, o.key) for o in plan.outputs if o.value is None]
    assert tombstones == [("training-examples", b"a"), ("mekb-updates", b"a")]
    assert plan.changes[b"u\x00a"] is None  # the changelog forgets the user too
    assert plan.outcomes["deleted"] == 1
    # idempotent: again, and for a user that never existed, the same tombstones only
    again = h.run([delete("a"), delete("nobody")])
    assert users_in_store(h) == {"b": {"kb:Nolan": 1.0, "category:SciFi": 0.3}}
    assert_df_exact(h)
    assert sum(1 for o in again.outputs if o.value is None) == 4
    # a later event starts a new MeKB at version 0
    plan = h.run([ev("e4", "a", "i3")])
    update = h.outputs(plan, "mekb-updates")[0]
    assert update["version"] == 1 and {e["id"] for e in update["entities"]} == {
        "kb:Villeneuve", "category:SciFi"}
    example = h.outputs(plan, "training-examples")[0]
    assert example["entities"] == [] and example["mekb_version"] == 0
    assert_df_exact(h)


def test_delete_inside_a_batch_keeps_the_order_of_the_users_events() -> None:
    h = harness()
    h.run([ev("e0", "b", "i2")])
    plan = h.run([ev("e1", "a", "i1"), ev("e2", "a", "i2"), delete("a"), ev("e3", "a", "i3"),
                  delete("b")])
    assert users_in_store(h) == {"a": {"kb:Villeneuve": 1.0, "category:SciFi": 0.3}}
    assert_df_exact(h)
    order = [(o.topic, o.key, o.value is None) for o in plan.outputs
             if o.key == b"a" and o.topic in ("mekb-updates", "training-examples")]
    # examples before the delete, its tombstones, then the new MeKB's example and update
    assert order == [("training-examples", b"a", False), ("training-examples", b"a", False),
                     ("training-examples", b"a", True), ("mekb-updates", b"a", True),
                     ("training-examples", b"a", False), ("mekb-updates", b"a", False)]
    assert not any(o.topic == "mekb-updates" and o.key == b"b" and o.value
                   for o in plan.outputs)


def test_delete_drops_the_users_parked_events_and_bad_deletes_go_to_dead_letters() -> None:
    h = harness()
    h.run([ev("e1", "a", "late"), ev("e2", "b", "late")])
    assert h.part.parked_count == 2
    plan = h.run([delete("a"), delete("a", key="x"), InRecord(0, b"a", b'{"type": "delete_user"}')])
    assert h.part.parked_count == 1
    reasons = [json.loads(o.value)["reason"] for o in plan.outputs if o.topic == "dead-letters"]
    assert reasons == ["key_mismatch", "missing_field"]
    h.catalog.put(item("late", ("kb:Late", 1.0)))
    h.run([])
    assert users_in_store(h) == {"b": {"kb:Late": 1.0}}  # a's parked event never applied
    assert_df_exact(h)


def test_decay_follows_the_users_event_time_and_prunes_below_min_k() -> None:
    h = harness(decay_half_life_s=100.0, decay_min_k=0.2)
    h.run([ev("e1", "a", "i1", ts=1000.0), ev("e2", "b", "i1", ts=1000.0)])
    plan = h.run([ev("e2", "a", "i2", ts=1100.0)])  # a: counts halve first
    assert h.counts("a") == pytest.approx({"kb:Nolan": 1.5, "brand:WB": 0.5})  # SciFi 0.15 left
    # the example sees the MeKB decayed to the event's time, scored from the decayed k
    example = h.outputs(plan, "training-examples")[0]["entities"]
    assert [(e["id"], e["k"], e["score"]) for e in example] == [("kb:Nolan", 0.5, 1.0)]
    assert_df_exact(h)
    assert h.df.df.get("category:SciFi") == 1  # b still holds it
    plan = h.run([ev("e3", "a", "i3", ts=1000.0)])  # late: its weight decayed to a's time
    assert h.counts("a") == pytest.approx({"kb:Nolan": 1.5, "brand:WB": 0.5,
                                           "kb:Villeneuve": 0.5})  # SciFi 0.15 < 0.2 pruned
    assert h.outputs(plan, "mekb-updates")[0]["ts"] == 1100.0
    assert_df_exact(h)


def test_ttl_removes_users_behind_the_partitions_stream_time() -> None:
    h = harness(user_ttl_s=100.0)
    h.run([ev("e1", "a", "i1", ts=1000.0), ev("e2", "b", "i2", ts=1050.0)])
    plan = h.run([ev("e3", "b", "i3", ts=1101.0)])  # a: 101 s behind stream time
    assert set(users_in_store(h)) == {"b"}
    assert plan.outcomes["user_expired"] == 1
    assert [(o.topic, o.key) for o in plan.outputs if o.value is None] == [
        ("mekb-updates", b"a")]  # no training-examples tombstone: not an erasure
    assert_df_exact(h)
    plan = h.run([ev("e4", "c", "i1", ts=900.0)])  # older than the horizon: gone at once
    assert set(users_in_store(h)) == {"b"} and plan.outcomes["user_expired"] == 1
    h.part = h.new_partition()  # the TTL index and stream time come back from the store
    assert h.part.stream_time == 1101.0
    h.run([ev("e5", "a", "i1", ts=1300.0)])
    assert set(users_in_store(h)) == {"a"}
    assert_df_exact(h)


def random_log(seed: int, n: int = 400) -> list[tuple[InRecord, dict[str, object]]]:
    rng = random.Random(seed)
    out: list[tuple[InRecord, dict[str, object]]] = []
    t = 1000.0
    for k in range(n):
        user = f"u{rng.randrange(12)}"
        if rng.random() < 0.04:
            body: dict[str, object] = {"type": "delete_user", "user_id": user, "ts": t}
        else:
            t += rng.expovariate(1 / 20.0)
            # some late events, some negative ratings
            ts = t - rng.uniform(0, 400) if rng.random() < 0.2 else t
            body = {"event_id": f"e{k}", "user_id": user, "item_id": f"i{rng.randrange(1, 9)}",
                    "domain": "action", "action": "click", "ts": ts,
                    "rating": 2.0 if rng.random() < 0.1 else 5.0,
                    "weight": rng.choice((0.5, 1.0, 3.0))}
        out.append((InRecord(0, user.encode(), json.dumps(body).encode()), body))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("config", [
    {"decay_half_life_s": 60.0, "decay_min_k": 0.05},
    {"user_ttl_s": 200.0},
    {"decay_half_life_s": 80.0, "decay_min_k": 0.1, "user_ttl_s": 300.0},
    {},
])
def test_random_logs_match_the_reference_whatever_the_batches(seed: int,
                                                              config: dict[str, float]) -> None:
    log = random_log(seed)
    h = harness(**config)
    for n in range(4, 9):  # entities a user may not hold yet when a late event brings them
        h.catalog.put(item(f"i{n}", (f"kb:P{n}", 0.4), (f"category:C{n % 3}", 0.2)))
    ents = {i.item_id: [(e, w) for e, _, w in i.entities] for i in h.catalog.items.values()}
    ref = reference_states([body for _, body in log], lambda i: ents[i], lambda u: 0,
                           half_life=config.get("decay_half_life_s", 0.0),
                           min_k=config.get("decay_min_k", 0.01),
                           ttl=config.get("user_ttl_s", 0.0))
    if config.get("user_ttl_s"):
        assert ref.expired > 5
    if config.get("decay_half_life_s"):
        assert ref.pruned > 5
    rng = random.Random(seed)
    pos = 0
    while pos < len(log):  # random batch boundaries, and a reload from the store now and then
        size = rng.randint(1, 60)
        h.run([r for r, _ in log[pos:pos + size]])
        pos += size
        if rng.random() < 0.3:
            h.part = h.new_partition()
    got = users_in_store(h)
    assert set(got) == set(ref.users)
    for user, counts in ref.users.items():
        assert got[user] == pytest.approx(counts, rel=1e-12, abs=1e-12), user
    assert_df_exact(h)
    # the same log again changes nothing (offsets below the consumed one)
    h.run([r for r, _ in log], offset=0)
    assert users_in_store(h) == got


@pytest.mark.parametrize("crash", ["before_changelog", "before_df_partials"])
def test_a_crash_mid_delete_recovers_exactly(crash: str) -> None:
    """The worker's crash points around a batch with deletions: nothing durable yet
    (the batch is replayed from the committed offset), or changelog and RocksDB written
    but no df partial published (the restore re-publishes every partial)."""
    first = [ev("e1", "a", "i1"), ev("e2", "a", "i2"), ev("e3", "b", "i1"), ev("e4", "c", "i3")]
    batch = [delete("a"), ev("e5", "c", "i1"), delete("b"), ev("e6", "b", "i2")]
    clean = harness(user_ttl_s=500.0, decay_half_life_s=100.0)
    clean.run(first)
    clean.run(batch)
    h = harness(user_ttl_s=500.0, decay_half_life_s=100.0)
    h.run(first)
    start = h.offset
    plan = h.part.process([InRecord(start + i, r.key, r.value) for i, r in enumerate(batch)],
                          (), 1000.0)
    assert plan.outcomes["deleted"] == 2
    if crash == "before_df_partials":
        h.store.write({store_prefix(0) + k: v for k, v in plan.changes.items()})
    h.part = h.new_partition()  # the restart
    for key, value in h.part.df_snapshot():
        h.df.apply(key, value)
    h.run(batch, offset=start)  # redelivered from the committed offset
    assert users_in_store(h) == users_in_store(clean) == {
        "b": {"kb:Nolan": 1.0, "brand:WB": 0.5},
        "c": {"kb:Villeneuve": 1.0, "category:SciFi": 0.6, "kb:Nolan": 1.0}}
    assert_df_exact(h)
    assert h.df.df == clean.df.df and h.df.n_users == clean.df.n_users == 2
