"""Typed answers of the embedding service (the shapes of serving/schemas.py).

Built from the JSON by field name; fields a newer server adds are ignored, so an older
client keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def _known(cls: type[T], data: dict[str, Any], **nested: Any) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names}, **nested)


@dataclass(frozen=True)
class UserEmbedding:
    user_id: str
    embedding: list[float]
    dim: int
    model_version: str
    mekb_version: int  # 0: unknown user (cold start: the embedding of an empty MeKB)
    mekb_ts: float | None
    computed_at: float
    cold_start: bool
    stale: bool
    cached: bool
    replica_stale: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserEmbedding:
        return _known(cls, data)


@dataclass(frozen=True)
class BatchEmbeddings:
    model_version: str  # every embedding is by this version
    dim: int
    embeddings: list[UserEmbedding]  # in the order of the ids asked for

    def by_user(self) -> dict[str, UserEmbedding]:
        return {e.user_id: e for e in self.embeddings}


@dataclass(frozen=True)
class Entity:
    id: str
    title: str
    k: float
    score: float


@dataclass(frozen=True)
class UserMeKB:
    user_id: str
    mekb_version: int
    mekb_ts: float
    updated_at: float
    entities: list[Entity]  # best first
    seen_items: list[str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserMeKB:
        return _known(cls, {k: v for k, v in data.items() if k != "entities"},
                      entities=[_known(Entity, e) for e in data.get("entities", [])])


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float


@dataclass(frozen=True)
class Recommendations:
    user_id: str
    domain: str
    model_version: str
    mekb_version: int
    cold_start: bool
    items: list[ScoredItem]  # best first, seen items excluded

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recommendations:
        return _known(cls, {k: v for k, v in data.items() if k != "items"},
                      items=[_known(ScoredItem, i) for i in data.get("items", [])])


@dataclass(frozen=True)
class ItemEmbeddings:
    model_version: str
    domain: str | None
    dim: int
    total: int  # items of the version (domain); pages cover [0, total)
    offset: int
    item_ids: list[str]
    embeddings: list[list[float]]  # row i belongs to item_ids[i]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemEmbeddings:
        return _known(cls, data)


@dataclass(frozen=True)
class ModelVersion:
    version: str
    kind: str  # full | items
    parent: str | None
    created_at: float
    metrics: dict[str, Any]
    load_failed: str | None


@dataclass(frozen=True)
class Pin:
    version: str
    at: float
    reason: str


@dataclass(frozen=True)
class Models:
    active: str | None  # the registry's ACTIVE version
    serving: str | None  # the version this server answers with
    pinned: Pin | None
    versions: list[ModelVersion]
    held: list[str] = field(default_factory=list)  # published inactive while pinned

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Models:
        pin = data.get("pinned")
        return _known(cls, {k: v for k, v in data.items() if k not in ("pinned", "versions")},
                      pinned=_known(Pin, pin) if pin else None,
                      versions=[_known(ModelVersion, v) for v in data.get("versions", [])])


@dataclass(frozen=True)
class Ready:
    ready: bool
    model_version: str | None
    replica_caught_up: bool
    replica_stale: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ready:
        return _known(cls, data)
