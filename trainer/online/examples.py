"""Training examples as the trainer keeps them (docs/contracts.md `training-examples`).

Only what training, the gate and the refit need is kept: the user's entity titles
in score order (the text is built per model, `sequence_text` depends on its
max_tokens) with their entity ids and MeKBScores (what EntityGraph reads), the target
item and its domain.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from mekb.scoring import sequence_text

# More titles than any max_tokens up to 512 can use (sequence_text keeps max_tokens // 2).
MAX_TITLES = 256


class InvalidExample(ValueError):
    """A record that is not a v1 training example."""


@dataclass(frozen=True)
class Example:
    example_id: str
    user_id: str
    domain: str
    item_id: str
    ts: float
    titles: tuple[str, ...]
    # Entities of the user's MeKB when the example was made (`titles` may hold only the
    # best of them: the stream worker's MEKB_EXAMPLE_ENTITIES). Not checkpointed.
    mekb_size: int = field(default=0, compare=False)
    # Aligned with `titles`: the entities' ids and MeKBScores (empty in checkpoints
    # written before model kinds: such examples give EntityGraph an empty MeKB).
    entity_ids: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()

    def cut_short(self, max_tokens: int) -> bool:
        """Whether a model of `max_tokens` would read more titles than the example has
        while the MeKB had more (`sequence_text` reads up to max_tokens // 2)."""
        return len(self.titles) < min(self.mekb_size, max_tokens // 2)

    def text(self, max_tokens: int) -> str:
        return sequence_text(list(self.titles), max_tokens)

    def to_json(self) -> list[Any]:
        """Compact form for checkpoints (the recent windows)."""
        return [self.example_id, self.user_id, self.domain, self.item_id, self.ts,
                list(self.titles), list(self.entity_ids), list(self.scores)]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> Example:
        eid, user, domain, item, ts, titles = row[:6]
        ids, scores = (row[6], row[7]) if len(row) >= 8 else ((), ())
        return cls(str(eid), str(user), str(domain), str(item), float(ts),
                   tuple(str(t) for t in titles), 0, tuple(str(e) for e in ids),
                   tuple(float(x) for x in scores))


def parse_example(value: bytes | None) -> Example:
    """Decode one `training-examples` record; InvalidExample says why not. (orjson and
    one comprehension per field: at thousands of examples/s this was a tenth of
    EntityGraph's continuous training time with `json` and a loop per entity.)"""
    if not value:
        raise InvalidExample("empty record")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidExample(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidExample("not a JSON object")
    if data.get("v") != 1:
        raise InvalidExample(f"unsupported schema version {data.get('v')!r}")
    try:
        ids = {k: data[k] for k in ("example_id", "user_id", "domain", "item_id")}
        ts = float(data.get("ts") or 0.0)
        entities = data["entities"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidExample(f"missing or bad field: {exc}") from None
    for key, val in ids.items():
        if not isinstance(val, str) or not val:
            raise InvalidExample(f"{key} must be a non-empty string")
    if not isinstance(entities, list):
        raise InvalidExample("entities must be a list")
    titles, ids_, scores = _entities(entities[:MAX_TITLES])
    size = data.get("mekb_size", len(entities))  # absent before the field existed
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidExample("mekb_size must be a non-negative integer")
    return Example(ids["example_id"], ids["user_id"], ids["domain"], ids["item_id"], ts,
                   titles, size, ids_, scores)


_TITLE, _ID, _SCORE = (operator.methodcaller("get", k) for k in ("title", "id", "score"))
_NUMBER = {float, int}


def _entities(ents: list[Any]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]]:
    """(titles, ids, scores). Entities without a non-empty string title are left out; a
    missing id is the title, a missing, negative or non-numeric score 0. The stream
    worker's records are regular, checked with C-level map/set passes (a per-entity
    Python loop was most of the decoding time); anything else takes the loop."""
    if set(map(type, ents)) <= {dict}:
        titles = list(map(_TITLE, ents))
        ids = list(map(_ID, ents))
        scores = list(map(_SCORE, ents))
        if set(map(type, titles)) <= {str} and "" not in titles and \
                set(map(type, ids)) <= {str} and "" not in ids and \
                set(map(type, scores)) <= _NUMBER and (not scores or min(scores) >= 0):
            return tuple(titles), tuple(ids), tuple(map(float, scores))
    kept = [e for e in ents if type(e) is dict and _title(e.get("title"))]
    return (tuple(e["title"] for e in kept),
            tuple(str(e["id"]) if _title(e.get("id")) else e["title"] for e in kept),
            tuple(_score(e.get("score")) for e in kept))


def _title(value: Any) -> bool:
    return type(value) is str and value != ""


def _score(value: Any) -> float:
    # (bool is an int subclass, but not a score; orjson gives exact int/float types)
    return float(value) if (type(value) is float or type(value) is int) and value >= 0 else 0.0
