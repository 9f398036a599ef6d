"""Python client of the MeKB-Stream embedding service (`mekb serve`).

Depends on httpx and the standard library only (no server, Kafka or model packages), so a
platform imports it without the rest of MeKB-Stream:

    from mekb_client import Client

    with Client("http://127.0.0.1:8470", api_key="...", model_version=None) as mekb:
        emb = mekb.embedding("u1")              # UserEmbedding
        batch = mekb.embeddings(["u1", "u2"])   # BatchEmbeddings, one model version
        recs = mekb.recommendations("u1", domain="action", k=10)

`AsyncClient` has the same calls, awaitable. Errors: mekb_client.errors.
"""

from __future__ import annotations

from mekb_client.client import AsyncClient, Client, Retry
from mekb_client.errors import (
    APIError,
    Conflict,
    Forbidden,
    InvalidRequest,
    MeKBError,
    ModelVersionMismatch,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    WrongShard,
)
from mekb_client.models import (
    BatchEmbeddings,
    Entity,
    ItemEmbeddings,
    Models,
    ModelVersion,
    Pin,
    Ready,
    Recommendations,
    ScoredItem,
    UserEmbedding,
    UserMeKB,
)
from mekb_client.routing import ShardRouter

__all__ = [
    "APIError", "AsyncClient", "BatchEmbeddings", "Client", "Conflict", "Entity", "Forbidden",
    "InvalidRequest", "ItemEmbeddings", "MeKBError", "ModelVersion", "ModelVersionMismatch",
    "Models", "NotFound", "Pin", "RateLimited", "Ready", "Recommendations", "Retry",
    "ScoredItem", "ServerError", "ServiceUnavailable", "ShardRouter", "TransportError",
    "Unauthorized", "UserEmbedding", "UserMeKB", "WrongShard",
]
