"""Response shapes of the HTTP API, for the OpenAPI document (`/openapi.json`, `/docs`).

The handlers still write their JSON with orjson (serving/app.py `_json`: embeddings
are long float lists that FastAPI's generic encoder would walk element by element),
so these models document the responses and are not used to serialise them; the
tests validate real responses against the published schemas so the two cannot
drift apart (tests/unit/test_serving_openapi.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: one human-readable string (never a stack trace)."""

    detail: str = Field(description="What is wrong, e.g. `k: at most 1000, got 5000`.")


class UserEmbeddingOut(BaseModel):
    user_id: str
    embedding: list[float] = Field(description="`dim` floats; score = dot product with items.")
    dim: int
    model_version: str = Field(description="The model version that computed it.")
    mekb_version: int = Field(description="The user's MeKB version it was computed from "
                              "(0: unknown user, the embedding of an empty MeKB).")
    mekb_ts: float | None = Field(description="Event time of the latest interaction in that "
                                  "MeKB (unix seconds); null for a cold start or a stale answer.")
    computed_at: float = Field(description="Wall time the embedding was computed (unix s).")
    cold_start: bool = Field(description="The user has no MeKB yet.")
    stale: bool = Field(description="An older cached embedding (only with `allow_stale`).")
    cached: bool
    replica_stale: bool = Field(description="The broker has not answered for "
                                "MEKB_SERVING_UPSTREAM_TIMEOUT_S: newer updates may be missing.")


class BatchEmbeddingsOut(BaseModel):
    model_version: str
    dim: int
    embeddings: list[UserEmbeddingOut] = Field(description="In the order of `user_ids`.")


class EntityOut(BaseModel):
    id: str = Field(description="Knowledge-base entity id, e.g. `kb:Christopher Nolan`.")
    title: str
    k: float = Field(description="Weighted interaction count k(e).")
    score: float = Field(description="MeKBScore (docs/contracts.md `mekb-updates`).")


class UserMeKBOut(BaseModel):
    user_id: str
    mekb_version: int
    mekb_ts: float = Field(description="Event time of the latest applied interaction.")
    updated_at: float = Field(description="Wall time of the state update.")
    entities: list[EntityOut] = Field(description="Best first.")
    seen_items: list[str]


class ScoredItemOut(BaseModel):
    item_id: str
    score: float


class RecommendationsOut(BaseModel):
    user_id: str
    domain: str
    model_version: str
    mekb_version: int
    cold_start: bool
    items: list[ScoredItemOut] = Field(description="Best first; seen items excluded.")


class ItemEmbeddingsOut(BaseModel):
    model_version: str
    domain: str | None
    dim: int
    total: int = Field(description="Items of the version (domain); pages cover [0, total).")
    offset: int
    item_ids: list[str]
    embeddings: list[list[float]] = Field(description="Row i belongs to item_ids[i].")


class ModelVersionOut(BaseModel):
    version: str
    kind: str = Field(description="`full` (new user tower + items) or `items` (item refit).")
    parent: str | None
    created_at: float
    metrics: dict[str, Any]
    load_failed: str | None = Field(description="Why this server could not load it, if so.")


class PinOut(BaseModel):
    version: str = Field(description="The pinned (and active) version.")
    at: float = Field(description="Unix time the pin was set or last moved.")
    reason: str = Field(description="`pin`, `rollback` (a rollback pins) or `activate` (an "
                        "admin activation moved the pin).")


class ModelsOut(BaseModel):
    active: str | None = Field(description="The registry's ACTIVE version.")
    serving: str | None = Field(description="The version this server answers with.")
    pinned: PinOut | None = Field(default=None, description="The pin, if any: the trainer "
                                  "then publishes its new versions inactive.")
    held: list[str] = Field(default=[], description="Versions the trainer published "
                            "inactive while the registry was pinned.")
    versions: list[ModelVersionOut]


class ActivatedOut(BaseModel):
    active: str
    kind: str
    load_seconds: float


class RolledBackOut(BaseModel):
    active: str
    kind: str


class PinnedOut(BaseModel):
    active: str
    kind: str
    pinned: PinOut


class UnpinnedOut(BaseModel):
    unpinned: str | None = Field(description="The version that was pinned (null: none was).")


class HealthOut(BaseModel):
    status: str
    shard: str = Field("0/1", description="i/n: the share of users this replica serves.")


class ReadyOut(BaseModel):
    ready: bool
    model_version: str | None
    replica_caught_up: bool = Field(description="The replica read mekb-updates up to the "
                                    "end offsets seen at start.")
    replica_stale: bool = Field(description="The broker has not answered for "
                                "MEKB_SERVING_UPSTREAM_TIMEOUT_S.")


_ERRORS = {
    401: "Missing or invalid `X-API-Key` (checked before any request body is read).",
    403: "Admin endpoints are disabled (MEKB_SERVING_ADMIN_KEY unset).",
    404: "Unknown user MeKB, domain or model version.",
    409: "The model version could not be loaded, or the registry refuses the change.",
    421: "Sharded serving: the user belongs to another shard (the body's `owners` names it).",
    413: "Request body over the limit (counted on the bytes read, chunked bodies included).",
    422: "Invalid request: every problem, in one string.",
    500: "Internal error (details in the server log).",
    503: "No model version loaded yet.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries of FastAPI for these error codes, all `{"detail": "..."}`.
    Naming 422 here also replaces FastAPI's default 422 schema (a list of errors),
    which is not what this API returns."""
    return {code: {"model": ErrorOut, "description": _ERRORS[code]} for code in codes}
