"""Event-time semantics of late events (docs/contracts.md): a late interaction is
applied and bumps the MeKB's `version`, but `ts` (the newest event time applied)
never moves backwards."""

from __future__ import annotations

from streams.codec import UserState
from streams.partition import store_prefix
from tests.unit.test_streams_partition import Harness, ev, item


def _harness() -> Harness:
    h = Harness()
    h.catalog.put(item("i1", ("kb:Nolan", 1.0)))
    h.catalog.put(item("i2", ("kb:Villeneuve", 1.0)))
    h.catalog.take_fresh()
    return h


def test_a_late_event_counts_but_does_not_move_mekb_ts_backwards() -> None:
    h = _harness()
    first = h.outputs(h.run([ev("e1", "u", "i1", ts=200.0)]), "mekb-updates")
    assert [(u["version"], u["ts"]) for u in first] == [(1, 200.0)]
    late = h.outputs(h.run([ev("e2", "u", "i2", ts=50.0)]), "mekb-updates")
    assert [(u["version"], u["ts"]) for u in late] == [(2, 200.0)]
    entities: list[dict[str, object]] = late[0]["entities"]  # type: ignore[assignment]
    assert {e["id"] for e in entities} == {"kb:Nolan", "kb:Villeneuve"}
    # within one batch, in either order, and through the stored state (a restart)
    h2 = _harness()
    both = h2.outputs(h2.run([ev("a", "v", "i1", ts=300.0), ev("b", "v", "i2", ts=10.0)]),
                      "mekb-updates")
    assert [(u["version"], u["ts"]) for u in both] == [(2, 300.0)]
    raw = h2.store.get(store_prefix(0) + b"u\x00v")
    assert raw is not None and UserState.decode(raw).ts == 300.0
    h2.part = h2.new_partition()  # reloaded from the store, as after a restart
    newer = h2.outputs(h2.run([ev("c", "v", "i1", ts=400.0)]), "mekb-updates")
    assert [(u["version"], u["ts"]) for u in newer] == [(3, 400.0)]
