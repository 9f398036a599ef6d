"""An independent reference of user deletion, decay and TTL (docs/architecture.md
"Erasure, decay and TTL"), written from the documented rules, not from streams/:
a plain loop over the log in order, one dict per partition, every user scanned for
expiry. Shared by the unit and the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Entities = Sequence[tuple[str, float]]


@dataclass
class _User:
    ts: float = 0.0
    counts: dict[str, float] = field(default_factory=dict)


@dataclass
class Reference:
    users: dict[str, dict[str, float]]  # final counts of every user that exists
    expired: int = 0  # users removed by the TTL
    pruned: int = 0  # entities that left a MeKB by decay


def reference_states(
    log: Sequence[dict[str, object]], entities_of: Callable[[str], Entities],
    partition_of: Callable[[str], int], *, half_life: float = 0.0, min_k: float = 0.01,
    ttl: float = 0.0, min_rating: float = 4.0,
) -> Reference:
    """`log`: unique valid interactions and {"type": "delete_user", "user_id"} records,
    in the order of their partition's offsets."""
    parts: dict[int, dict[str, _User]] = {}
    stream_time: dict[int, float] = {}
    out = Reference({})

    def expire(p: int) -> None:
        horizon = stream_time[p] - ttl
        for user in [u for u, s in parts[p].items() if s.ts < horizon]:
            del parts[p][user]
            out.expired += 1

    for event in log:
        user = str(event["user_id"])
        p = partition_of(user)
        users = parts.setdefault(p, {})
        if event.get("type") == "delete_user":
            users.pop(user, None)
            continue
        rating = event.get("rating")
        if rating is not None and float(rating) < min_rating:  # type: ignore[arg-type]
            continue
        t = float(event["ts"])  # type: ignore[arg-type]
        stream_time[p] = max(stream_time.get(p, 0.0), t)
        if ttl:
            expire(p)
        state = users.setdefault(user, _User())
        weight = float(event.get("weight", 1.0))  # type: ignore[arg-type]
        if half_life:
            if t > state.ts and state.counts:
                factor = 2.0 ** ((state.ts - t) / half_life)
                for entity, k in list(state.counts.items()):
                    if k * factor < min_k:
                        del state.counts[entity]
                        out.pruned += 1
                    else:
                        state.counts[entity] = k * factor
            elif t < state.ts:
                weight *= 2.0 ** ((t - state.ts) / half_life)
        ents = entities_of(str(event["item_id"]))
        for entity, w in ents:
            state.counts[entity] = state.counts.get(entity, 0.0) + weight * w
        if half_life:
            for entity, _ in ents:
                if entity in state.counts and state.counts[entity] < min_k:
                    del state.counts[entity]
                    out.pruned += 1
        state.ts = max(state.ts, t)
        if ttl:
            expire(p)
    out.users = {u: s.counts for users in parts.values() for u, s in users.items()}
    return out
