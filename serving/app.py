"""The HTTP API of `mekb serve` (FastAPI): routes, auth, limits, error shapes.

FastAPI because it gives typed request validation and OpenAPI docs (`/docs`,
`/openapi.json`) from the same declarations, on the asyncio loop the Kafka
consumers and the dynamic batcher already run on.

Auth: `X-API-Key` compared with hmac.compare_digest against every configured key
(no early exit, so timing does not reveal which key nearly matched); the admin
endpoints take a separate key. /healthz, /readyz and /metrics are open (the
server binds loopback by default; put them behind the network policy otherwise).
Every error is `{"detail": "..."}` with a 4xx code, or a bare 500/503 message:
stack traces stay in the server log.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from mekb.registry import Registry, RegistryError, VersionNotFound
from serving.manager import ModelManager
from serving.model import ItemSet, LoadedModel, ModelLoadError, load_items
from serving.service import EmbeddingService, UserEmbedding

logger = logging.getLogger(__name__)

USER_ID_MAX = 256
ITEMS_PAGE_MAX = 50_000  # rows per /v1/items/embeddings page (~50 MB of JSON at K=256)
SCORE_WINDOW_S = 300.0
DOMAIN_MAX = 128
# Module level: with postponed annotations FastAPI resolves these names in the module.
UserId = Annotated[str, Path(min_length=1, max_length=USER_ID_MAX, description="user id")]


@dataclass(frozen=True)
class ApiConfig:
    api_keys: tuple[str, ...] = ()  # empty = no auth (loopback only, checked by the CLI)
    admin_key: str | None = None  # None = admin endpoints disabled
    max_batch_ids: int = 256
    max_k: int = 1000
    max_body_bytes: int = 1 << 20
    score_window_s: float = SCORE_WINDOW_S
    title: str = "MeKB-Stream embedding service"
    extra_startup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    extra_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _key_matches(given: str | None, keys: tuple[str, ...]) -> bool:
    if given is None:
        return False
    ok = False
    for key in keys:  # compare with every key: the time taken does not depend on which
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[Annotated[str, Field(min_length=1, max_length=USER_ID_MAX)]] = Field(
        ..., min_length=1, description="User ids (at most MEKB_SERVING_MAX_BATCH_IDS)."
    )
    allow_stale: bool = Field(
        False, description="Accept a cached embedding of an older MeKB version (flagged stale) "
        "instead of computing the current one.",
    )


def _embedding_json(e: UserEmbedding, replica_stale: bool) -> dict[str, Any]:
    return {
        "user_id": e.user_id,
        "embedding": e.embedding,
        "dim": int(e.embedding.shape[0]),
        "model_version": e.model_version,
        "mekb_version": e.mekb_version,
        "mekb_ts": e.mekb_ts,
        "computed_at": e.computed_at,
        "cold_start": e.cold_start,
        "stale": e.stale,
        "cached": e.cached,
        # the broker has not answered lately: updates after mekb_version may be missing
        "replica_stale": replica_stale,
    }


def _json(body: Any, status: int = 200) -> Response:
    """orjson straight to bytes: embeddings are long float lists, and FastAPI's generic
    encoder walks them element by element."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class _MetricsMiddleware:
    """Pure ASGI: latency and status per route template (not per raw path: ids would
    explode the label set), body size limit before the body is read."""

    def __init__(self, app: Any, service: EmbeddingService, max_body: int) -> None:
        self.app = app
        self.metrics = service.metrics
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                response = JSONResponse(
                    {"detail": f"request body over {self.max_body} bytes"}, status_code=413
                )
                await response(scope, receive, send)
                self._observe(scope, 413, start)
                return

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._observe(scope, status, start)

    def _observe(self, scope: dict[str, Any], status: int, start: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
        self.metrics.requests.labels(endpoint, str(status)).inc()


def create_app(
    service: EmbeddingService,
    manager: ModelManager,
    registry_metrics: Any,
    config: ApiConfig | None = None,
) -> FastAPI:
    """The FastAPI application; its lifespan starts/stops the service (+ extra tasks)."""
    cfg = config or ApiConfig()
    registry: Registry = manager.registry
    other_items: dict[str, ItemSet] = {}  # items of non-active versions, small LRU
    from monitoring.score_drift import ScoreDriftTracker

    # Served-score drift (docs/metrics.md): 5-minute windows of recommendation scores.
    score_drift = ScoreDriftTracker(cfg.score_window_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        for hook in cfg.extra_startup:
            await hook()
        try:
            yield
        finally:
            for hook in cfg.extra_shutdown:
                await hook()
            await service.stop()

    app = FastAPI(
        title=cfg.title,
        version="1",
        description="Fresh EmbedMe user embeddings (MeKB-Rec) and the same version's item "
        "embeddings. Every user-facing response names the model version and the MeKB version "
        "it was computed from. Authenticate with the `X-API-Key` header.",
        lifespan=lifespan,
    )
    app.add_middleware(_MetricsMiddleware, service=service, max_body=cfg.max_body_bytes)

    # --- errors: 4xx with a clear message, never a stack trace --------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path,
                     exc_info=exc)
        return JSONResponse({"detail": "internal error (logged on the server)"},
                            status_code=500)

    # --- auth ----------------------------------------------------------------------------
    async def user_auth(
        x_api_key: Annotated[str | None, Header(description="API key")] = None,
    ) -> None:
        if not cfg.api_keys:
            return
        if not _key_matches(x_api_key, cfg.api_keys):
            raise HTTPException(401, "missing or invalid X-API-Key",
                                headers={"WWW-Authenticate": "ApiKey"})

    async def admin_auth(
        x_api_key: Annotated[str | None, Header(description="admin API key")] = None,
    ) -> None:
        if cfg.admin_key is None:
            raise HTTPException(403, "admin endpoints are disabled (MEKB_SERVING_ADMIN_KEY unset)")
        if not _key_matches(x_api_key, (cfg.admin_key,)):
            raise HTTPException(401, "missing or invalid admin X-API-Key",
                                headers={"WWW-Authenticate": "ApiKey"})

    def pinned() -> LoadedModel:
        model = service.model  # read ONCE: this request uses this version throughout
        if model is None:
            raise HTTPException(503, "no model version loaded yet")
        return model

    auth = [Depends(user_auth)]

    # --- users ---------------------------------------------------------------------------
    @app.get("/v1/users/{user_id}/embedding", dependencies=auth, tags=["users"])
    async def user_embedding(
        user_id: UserId,
        allow_stale: Annotated[bool, Query(description="accept an older cached embedding")] = False,
    ) -> Response:
        """The user's embedding by the active model version, computed from the user's
        latest MeKB (never older unless `allow_stale`, then `stale` says so). Unknown
        user: the embedding of an empty MeKB, `cold_start: true`, `mekb_version: 0`."""
        model = pinned()
        result = await service.embed(model, [user_id], allow_stale=allow_stale)
        return _json(_embedding_json(result[0], service.replica_stale))

    @app.post("/v1/users/embeddings", dependencies=auth, tags=["users"])
    async def user_embeddings(body: BatchRequest) -> Response:
        """Embeddings of up to MEKB_SERVING_MAX_BATCH_IDS users, all by one model version."""
        if len(body.user_ids) > cfg.max_batch_ids:
            raise HTTPException(422, f"user_ids: at most {cfg.max_batch_ids} ids per request, "
                                f"got {len(body.user_ids)}")
        model = pinned()
        result = await service.embed(model, body.user_ids, allow_stale=body.allow_stale)
        return _json({"model_version": model.version, "dim": model.dim,
                "embeddings": [_embedding_json(e, service.replica_stale) for e in result]})

    @app.get("/v1/users/{user_id}/mekb", dependencies=auth, tags=["users"])
    async def user_mekb(user_id: UserId) -> Response:
        """The user's MeKB: weighted entities (best first) and recently seen items."""
        rec = service.record(user_id)
        if rec is None:
            raise HTTPException(404, f"user {user_id!r} has no MeKB (no interactions applied)")
        ranked = sorted(rec.entities, key=lambda e: -float(e.get("score", 0.0)))
        return _json({"user_id": rec.user_id, "mekb_version": rec.version, "mekb_ts": rec.ts,
                "updated_at": rec.updated_at, "entities": ranked, "seen_items": rec.seen_items})

    @app.get("/v1/users/{user_id}/recommendations", dependencies=auth, tags=["users"])
    async def recommendations(
        user_id: UserId,
        domain: Annotated[str, Query(min_length=1, max_length=DOMAIN_MAX)],
        k: Annotated[int, Query(ge=1, description="at most MEKB_SERVING_MAX_K")] = 10,
    ) -> Response:
        """Top-k items of `domain` by dot product with the user's embedding, both from the
        same model version, excluding the user's seen items."""
        if k > cfg.max_k:
            raise HTTPException(422, f"k: at most {cfg.max_k}, got {k}")
        model = pinned()
        items = model.items
        matrix = items.domain_matrix.get(domain)
        if matrix is None:
            known = ", ".join(sorted(items.domain_matrix)[:20])
            raise HTTPException(404, f"unknown domain {domain!r} in model {model.version} "
                                f"(known: {known})")
        emb = (await service.embed(model, [user_id]))[0]
        rec = service.record(user_id) if not emb.cold_start else None
        rows = items.domain_rows[domain]
        scores = matrix @ emb.embedding
        if rec is not None and rec.seen_items:
            seen = [items.index[i] for i in rec.seen_items if i in items.index]
            local = [int(items.local[r]) for r in seen if items.domains[r] == domain]
            if local:
                scores = scores.copy()
                scores[local] = -np.inf
        n = int(np.isfinite(scores).sum())
        take = min(k, n)
        top = np.argpartition(-scores, take - 1)[:take] if take else np.zeros(0, dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        psi = score_drift.observe(scores[top].tolist(), time.time())
        if psi is not None:
            service.metrics.score_psi.set(psi)
        return _json({
            "user_id": user_id, "domain": domain, "model_version": model.version,
            "mekb_version": emb.mekb_version, "cold_start": emb.cold_start,
            "items": [{"item_id": items.item_ids[int(rows[t])], "score": float(scores[t])}
                      for t in top],
        })

    # --- items ----------------------------------------------------------------------------
    @app.get("/v1/items/embeddings", dependencies=auth, tags=["items"])
    async def item_embeddings(
        domain: Annotated[str | None, Query(max_length=DOMAIN_MAX)] = None,
        version: Annotated[str | None, Query(max_length=128)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=ITEMS_PAGE_MAX)] = ITEMS_PAGE_MAX,
    ) -> Response:
        """Item embeddings of one model version (default: the active one), optionally of
        one domain, for backends that build their own ANN index. Paged: rows
        [offset, offset + limit) of the version's (domain's) items; `total` is the count."""
        model = service.model
        if version is None or (model is not None and version == model.version):
            if model is None:
                raise HTTPException(503, "no model version loaded yet")
            version, items = model.version, model.items
        else:
            cached_items = other_items.get(version)
            if cached_items is not None:
                items = cached_items
            else:
                try:
                    mv = registry.get(version)
                    # checksums + file reads: off the event loop
                    items = await asyncio.get_running_loop().run_in_executor(
                        None, load_items, mv.path, mv.files)
                except VersionNotFound:
                    raise HTTPException(404, f"no model version {version!r}") from None
                except RegistryError as exc:
                    raise HTTPException(422, str(exc)) from None
                except ModelLoadError as exc:
                    raise HTTPException(409, f"version {version}: {exc}") from None
                other_items[version] = items
                while len(other_items) > 2:
                    other_items.pop(next(iter(other_items)))
        if domain is None:
            total = len(items.item_ids)
            ids = items.item_ids[offset:offset + limit]
            matrix = items.matrix[offset:offset + limit]
        else:
            if domain not in items.domain_rows:
                raise HTTPException(404, f"unknown domain {domain!r} in model {version}")
            rows = items.domain_rows[domain]
            total = len(rows)
            ids = [items.item_ids[int(r)] for r in rows[offset:offset + limit]]
            matrix = items.domain_matrix[domain][offset:offset + limit]
        return _json({"model_version": version, "domain": domain, "dim": items.matrix.shape[1],
                      "total": total, "offset": offset, "item_ids": ids,
                      "embeddings": np.ascontiguousarray(matrix)})

    # --- models ---------------------------------------------------------------------------
    @app.get("/v1/models", dependencies=auth, tags=["models"])
    async def models() -> Response:
        """Registry versions, the registry's ACTIVE one and the one this server serves."""
        active = registry.active_version()
        serving = service.model
        return _json({
            "active": active,
            "serving": serving.version if serving else None,
            "versions": [
                {"version": mv.version, "kind": mv.kind, "parent": mv.parent,
                 "created_at": mv.created_at, "metrics": mv.manifest.get("metrics") or {},
                 "load_failed": manager.failed.get(mv.version)}
                for mv in registry.list()
            ],
        })

    admin = [Depends(admin_auth)]

    @app.post("/v1/models/rollback", dependencies=admin, tags=["admin"])
    async def rollback() -> Response:
        """Re-activate the previously active version (loaded and warmed before the switch)."""
        try:
            model = await manager.rollback()
        except RegistryError as exc:
            raise HTTPException(409, str(exc)) from None
        except ModelLoadError as exc:
            raise HTTPException(409, f"rollback target could not be loaded: {exc}") from None
        return _json({"active": model.version, "kind": model.kind})

    @app.post("/v1/models/{version}/activate", dependencies=admin, tags=["admin"])
    async def activate(version: Annotated[str, Path(min_length=1, max_length=128)]) -> Response:
        """Verify, load and warm `version`, then make it active here and in the registry."""
        try:
            model = await manager.activate(version)
        except VersionNotFound:
            raise HTTPException(404, f"no model version {version!r}") from None
        except RegistryError as exc:
            raise HTTPException(422, str(exc)) from None
        except ModelLoadError as exc:
            raise HTTPException(409, f"version {version} could not be loaded: {exc}") from None
        return _json({"active": model.version, "kind": model.kind,
                "load_seconds": round(model.load_seconds, 3)})

    # --- operations -------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Response:
        """The process is up and its event loop answers."""
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> Response:
        """Ready only when a model version is loaded and the replica has caught up."""
        model = service.model
        ready = service.ready
        service.metrics.ready.set(1 if ready else 0)
        body = {"ready": ready, "model_version": model.version if model else None,
                "replica_caught_up": service.replica_caught_up}
        return _json(body, 200 if ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service.metrics.ready.set(1 if service.ready else 0)
        return Response(generate_latest(registry_metrics), media_type=CONTENT_TYPE_LATEST)

    return app
