"""Synthetic event logs for the stream tests and benchmark, with an independent
reference computation of what the MeKB agent must end up with.

The alias table rows name `n_entities` people; every item's title mentions one or
two of them and carries 1-3 categories, so the dictionary linker gives each item
kb and category entities (and product:<item_id>).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

FIRST = ("Alma", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
         "Kira", "Lars", "Mira", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara")
LAST = ("Anders", "Brook", "Castell", "Dorne", "Ekberg", "Falk", "Grove", "Holm", "Ivers",
        "Jarl", "Kest", "Lind", "Morrow", "Norde", "Orwell", "Pike", "Quast", "Rook", "Stahl",
        "Thorne")
CATEGORIES = ("Action", "Drama", "Comedy", "Sci-Fi", "Horror", "Romance", "War", "Western",
              "Crime", "Musical")


def people(n: int) -> list[str]:
    names = [f"{f} {last}" for last in LAST for f in FIRST]
    return names[:n]


def alias_rows(n_entities: int) -> list[tuple[str, str, int]]:
    return [(name, name, 10) for name in people(n_entities)]


@dataclass
class EventLog:
    items: list[dict[str, object]]
    late_items: list[dict[str, object]]  # produced after the interactions
    interactions: list[bytes]  # raw values, keyed by user (malformed ones included)
    keys: list[bytes]
    valid: list[dict[str, object]] = field(default_factory=list)  # unique, in log order


def generate(
    *, n_users: int, n_items: int, n_events: int, n_entities: int = 200, seed: int = 7,
    dup_rate: float = 0.0, malformed_rate: float = 0.0, late_rate: float = 0.0,
    negative_rate: float = 0.1,
) -> EventLog:
    rng = random.Random(seed)
    names = people(n_entities)
    items = []
    for i in range(n_items):
        domain = "action" if i % 3 == 0 else "drama"
        mentioned = rng.sample(names, rng.choice((1, 2)))
        items.append({
            "item_id": f"i{i}", "domain": domain, "ts": 1.0,
            "title": f"The story of {' and '.join(mentioned)}",
            "categories": rng.sample(CATEGORIES, rng.choice((1, 2, 3))),
        })
    late = {f"i{i}" for i in range(n_items) if rng.random() < late_rate}
    raw: list[bytes] = []
    keys: list[bytes] = []
    valid: list[dict[str, object]] = []
    pending_dups: list[tuple[int, bytes, bytes]] = []
    for n in range(n_events):
        user = f"u{int(rng.paretovariate(1.2) * 7) % n_users}"
        it = items[int(rng.random() ** 1.5 * n_items)]
        event = {"event_id": f"e{n}", "user_id": user, "item_id": it["item_id"],
                 "domain": it["domain"], "action": "rate", "ts": 1000.0 + n,
                 "rating": 2.0 if rng.random() < negative_rate else 5.0}
        value = json.dumps(event).encode()
        raw.append(value)
        keys.append(user.encode())
        valid.append(event)
        if rng.random() < dup_rate:  # redelivered a little later (a producer retry)
            pending_dups.append((n + rng.randint(1, 40), user.encode(), value))
        if rng.random() < malformed_rate:
            bad = rng.choice((b"{broken", b'{"event_id": "x"}', b"\xff\xfe", b"[]"))
            raw.append(bad)
            keys.append(user.encode())
        while pending_dups and pending_dups[0][0] <= n:
            _, k, v = pending_dups.pop(0)
            raw.append(v)
            keys.append(k)
    for _, k, v in pending_dups:
        raw.append(v)
        keys.append(k)
    return EventLog(
        items=[x for x in items if x["item_id"] not in late],
        late_items=[x for x in items if x["item_id"] in late],
        interactions=raw, keys=keys, valid=valid,
    )


Entities = Sequence[tuple[str, float]]


def reference_counts(
    valid: Sequence[dict[str, object]], entities_of: Callable[[str], Entities],
    *, min_rating: float = 4.0,
) -> dict[str, dict[str, float]]:
    """k(u, e) = Σ over unique positive events of u: event weight × entity weight."""
    counts: dict[str, dict[str, float]] = defaultdict(dict)
    for event in valid:
        rating = event.get("rating")
        if rating is not None and float(rating) < min_rating:  # type: ignore[arg-type]
            continue
        user = str(event["user_id"])
        weight = float(event.get("weight", 1.0))  # type: ignore[arg-type]
        for entity, w in entities_of(str(event["item_id"])):
            counts[user][entity] = counts[user].get(entity, 0.0) + weight * w
    return dict(counts)


def reference_df(counts: dict[str, dict[str, float]]) -> tuple[dict[str, int], int]:
    df: dict[str, int] = defaultdict(int)
    for user_counts in counts.values():
        for entity in user_counts:
            df[entity] += 1
    return dict(df), sum(1 for c in counts.values() if c)
