"""The HTTP API of `mekb serve` (FastAPI): routes, auth, limits, error shapes.

FastAPI because it gives typed request validation and OpenAPI docs (`/docs`,
`/openapi.json`) from the same declarations, on the asyncio loop the Kafka
consumers and the dynamic batcher already run on.

Auth: `X-API-Key` compared with hmac.compare_digest against every configured key
(no early exit, so timing does not reveal which key nearly matched); the admin
endpoints take a separate key. Both are declared as OpenAPI API-key security schemes
(`/docs` has an Authorize button). /healthz, /readyz and /metrics are open (the
server binds loopback by default; put them behind the network policy otherwise).
Every error is `{"detail": "..."}` (serving/schemas.py `ErrorOut`), 4xx, or 500/503
with a bare message: stack traces stay in the server log. `/docs` and `/redoc` load
their Swagger UI / ReDoc assets from this server (package fastapi-offline), so they
work without internet access.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from mekb.events import ID_MAX, ID_PATTERN
from mekb.registry import VERSION_RE, Registry, RegistryError, VersionNotFound
from serving.manager import ModelManager
from serving.model import ItemSet, LoadedModel, ModelLoadError, load_items
from serving.schemas import (
    ActivatedOut,
    BatchEmbeddingsOut,
    ErrorOut,
    HealthOut,
    ItemEmbeddingsOut,
    ModelsOut,
    PinnedOut,
    ReadyOut,
    RecommendationsOut,
    RolledBackOut,
    UnpinnedOut,
    UserEmbeddingOut,
    UserMeKBOut,
    errors,
)
from serving.service import EmbeddingService, UserEmbedding
from serving.sharding import ShardMap

logger = logging.getLogger(__name__)

USER_ID_MAX = 256
ITEMS_PAGE_MAX = 50_000  # rows per /v1/items/embeddings page (~50 MB of JSON at K=256)
OFFSET_MAX = (1 << 53) - 1  # JSON-safe integer; far beyond any item count
SCORE_WINDOW_S = 300.0
DOMAIN_MAX = 128
DELETE_TIMEOUT_S = 10.0  # DELETE /v1/users/{user_id}: the broker's acknowledgement
# Module level: with postponed annotations FastAPI resolves these names in the module.
UserId = Annotated[str, Path(min_length=1, max_length=USER_ID_MAX, description="user id")]
# A user id the event contract accepts (mekb.events.Id): what a deletion can name.
EventUserId = Annotated[str, Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN,
                                  description="user id (the event contract's ids)")]
VERSION_DOC = "model version id (1-128 of A-Z a-z 0-9 . _ -, not starting with . _ -)"
VersionId = Annotated[str, Path(pattern=VERSION_RE.pattern, description=VERSION_DOC)]
# OpenAPI security schemes (the Authorize button of /docs). auto_error=False: a missing
# key is this API's 401 `{"detail"}`, not FastAPI's 403.
user_key = APIKeyHeader(name="X-API-Key", scheme_name="UserKey", auto_error=False,
                        description="One of MEKB_SERVING_API_KEYS.")
admin_key = APIKeyHeader(name="X-API-Key", scheme_name="AdminKey", auto_error=False,
                         description="MEKB_SERVING_ADMIN_KEY.")


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
    # Publishes a user's deletion (mekb.erasure.UserDeleter.delete for one id); None:
    # DELETE /v1/users/{user_id} answers 503 (serving runs without Kafka).
    delete_user: Callable[[str], Awaitable[Any]] | None = None
    extra_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Sharded serving (MEKB_SERVING_SHARD): users of other shards get 421; None = every user.
    shards: ShardMap | None = None


@contextmanager
def _version_errors(version: str) -> Iterator[None]:
    """Registry and load errors of an admin action on `version`, as the HTTP answers
    the API declares: unknown 404, refused by the registry 422, not loadable 409."""
    try:
        yield
    except VersionNotFound:
        raise HTTPException(404, f"no model version {version!r}") from None
    except RegistryError as exc:
        raise HTTPException(422, str(exc)) from None
    except ModelLoadError as exc:
        raise HTTPException(409, f"version {version} could not be loaded: {exc}") from None


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


class UserDeletedOut(BaseModel):
    user_id: str
    status: str = Field(description="`accepted`: the deletion is on `interactions`; the "
                        "stream worker applies it in order with the user's events.")
    partition: int
    offset: int


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


class _HttpMiddleware:
    """Pure ASGI, around every request: latency and status per route template (not per
    raw path: ids would explode the label set), and the limits that must hold before
    FastAPI reads a body (it reads the whole body before running any dependency):

    - auth first: with API keys configured, a `/v1/` request that carries a body must
      present a known key (user or admin; the route's own dependency then checks
      which) or it gets 401 with its body unread;
    - size on the bytes READ: a declared Content-Length over the limit is refused
      unread; a chunked (or lying) body is counted as it streams and refused with 413
      the moment it crosses the limit, so at most `max_body` bytes are ever buffered.
    A refusal with the body not fully read says `Connection: close`, so the server
    drops the connection instead of draining the rest of an upload (after a short
    lingering close, serving/server.py, so that the client reads the answer rather than
    a TCP reset)."""

    def __init__(self, app: Any, service: EmbeddingService, max_body: int,
                 body_keys: tuple[str, ...]) -> None:
        self.app = app
        self.metrics = service.metrics
        self.max_body = max_body
        self.body_keys = body_keys  # empty = no auth configured (loopback)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        declared: int | None = None
        chunked = False
        given_key: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                declared = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-api-key":
                given_key = value
        body_done = not chunked and not declared
        refusal: tuple[int, str] | None = None
        if (not body_done and self.body_keys and scope["path"].startswith("/v1/")
                and not _key_matches(given_key.decode("latin-1") if given_key else None,
                                     self.body_keys)):
            refusal = (401, "missing or invalid X-API-Key")
        elif declared is not None and declared > self.max_body:
            refusal = (413, f"request body over {self.max_body} bytes")
        if refusal is not None:
            await _refuse(send, *refusal, close=not body_done)
            self._observe(scope, refusal[0], start)
            return

        received = 0
        started = False
        refused = False  # a 413 went out mid-body; the app's own answer is dropped

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, body_done, refused
            if refused:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_done = True
                if received > self.max_body:
                    if not started:
                        await _refuse(send, 413, f"request body over {self.max_body} bytes",
                                      close=not body_done)
                        refused = True
                    # to the app the client went away: it stops reading, and whatever it
                    # answers goes nowhere (send_wrapper drops it)
                    return {"type": "http.disconnect"}
            return message

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if not body_done:  # answered before the body was read: do not drain it
                    message = {**message, "headers": [*message.get("headers", ()),
                                                      (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_wrapper)
        except Exception:
            if not refused:  # else: the app failed on the cut-off body, already answered
                raise
        finally:
            self._observe(scope, 413 if refused else status, start)

    def _observe(self, scope: dict[str, Any], status: int, start: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
        self.metrics.requests.labels(endpoint, str(status)).inc()


async def _refuse(send: Any, status: int, detail: str, *, close: bool) -> None:
    headers = [(b"content-type", b"application/json")]
    if status == 401:
        headers.append((b"www-authenticate", b"ApiKey"))
    if close:
        headers.append((b"connection", b"close"))
    body = orjson.dumps({"detail": detail})
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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

    app: FastAPI = FastAPIOffline(
        title=cfg.title,
        version="1",
        description="Fresh EmbedMe user embeddings (MeKB-Rec) and the same version's item "
        "embeddings. Every user-facing response names the model version and the MeKB version "
        "it was computed from. Authenticate with the `X-API-Key` header (Authorize: "
        "`UserKey` for /v1 reads, `AdminKey` for the admin endpoints). Every error is "
        '`{"detail": "..."}`.',
        lifespan=lifespan,
        static_url="/docs-static",
        # no call to swagger.io's online validator: the page works offline
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        # every route lists its own errors; no route-independent default 422
        responses=errors(413, 500),
    )
    # Keys that may send a body to /v1/ (none configured: user routes are open).
    body_keys = cfg.api_keys + ((cfg.admin_key,) if cfg.api_keys and cfg.admin_key else ())
    app.add_middleware(_HttpMiddleware, service=service, max_body=cfg.max_body_bytes,
                       body_keys=body_keys)

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
    async def user_auth(x_api_key: Annotated[str | None, Security(user_key)] = None) -> None:
        if not cfg.api_keys:
            return
        if not _key_matches(x_api_key, cfg.api_keys):
            raise HTTPException(401, "missing or invalid X-API-Key",
                                headers={"WWW-Authenticate": "ApiKey"})

    async def admin_auth(x_api_key: Annotated[str | None, Security(admin_key)] = None) -> None:
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

    def misrouted(user_ids: list[str]) -> Response | None:
        """421 Misdirected Request for users another shard serves (the body names it)."""
        body = cfg.shards.foreign(user_ids) if cfg.shards is not None else None
        return None if body is None else _json(body, 421)

    # --- users ---------------------------------------------------------------------------
    @app.get("/v1/users/{user_id}/embedding", dependencies=auth, tags=["users"],
             response_model=UserEmbeddingOut, responses=errors(401, 422, 503, 421))
    async def user_embedding(
        user_id: UserId,
        allow_stale: Annotated[bool, Query(description="accept an older cached embedding")] = False,
    ) -> Response:
        """The user's embedding by the active model version, computed from the user's
        latest MeKB (never older unless `allow_stale`, then `stale` says so). Unknown
        user: the embedding of an empty MeKB, `cold_start: true`, `mekb_version: 0`."""
        if (foreign := misrouted([user_id])) is not None:
            return foreign
        model = pinned()
        result = await service.embed(model, [user_id], allow_stale=allow_stale)
        return _json(_embedding_json(result[0], service.replica_stale))

    @app.post("/v1/users/embeddings", dependencies=auth, tags=["users"],
              response_model=BatchEmbeddingsOut, responses=errors(401, 422, 503, 421))
    async def user_embeddings(body: BatchRequest) -> Response:
        """Embeddings of up to MEKB_SERVING_MAX_BATCH_IDS users, all by one model version."""
        if len(body.user_ids) > cfg.max_batch_ids:
            raise HTTPException(422, f"user_ids: at most {cfg.max_batch_ids} ids per request, "
                                f"got {len(body.user_ids)}")
        if (foreign := misrouted(body.user_ids)) is not None:
            return foreign
        model = pinned()
        result = await service.embed(model, body.user_ids, allow_stale=body.allow_stale)
        return _json({"model_version": model.version, "dim": model.dim,
                "embeddings": [_embedding_json(e, service.replica_stale) for e in result]})

    @app.get("/v1/users/{user_id}/mekb", dependencies=auth, tags=["users"],
             response_model=UserMeKBOut, responses=errors(401, 404, 422, 421))
    async def user_mekb(user_id: UserId) -> Response:
        """The user's MeKB: weighted entities (best first) and recently seen items."""
        if (foreign := misrouted([user_id])) is not None:
            return foreign
        rec = service.record(user_id)
        if rec is None:
            raise HTTPException(404, f"user {user_id!r} has no MeKB (no interactions applied)")
        ranked = sorted(rec.entities, key=attrgetter("score"), reverse=True)  # stable
        return _json({"user_id": rec.user_id, "mekb_version": rec.version, "mekb_ts": rec.ts,
                      "updated_at": rec.updated_at, "entities": msgspec.to_builtins(ranked),
                      "seen_items": rec.seen_items})

    @app.get("/v1/users/{user_id}/recommendations", dependencies=auth, tags=["users"],
             response_model=RecommendationsOut, responses=errors(401, 404, 422, 503, 421))
    async def recommendations(
        user_id: UserId,
        domain: Annotated[str, Query(min_length=1, max_length=DOMAIN_MAX)],
        k: Annotated[int, Query(ge=1, description="at most MEKB_SERVING_MAX_K")] = 10,
    ) -> Response:
        """Top-k items of `domain` by dot product with the user's embedding, both from the
        same model version, excluding the user's seen items."""
        if k > cfg.max_k:
            raise HTTPException(422, f"k: at most {cfg.max_k}, got {k}")
        if (foreign := misrouted([user_id])) is not None:
            return foreign
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
    @app.get("/v1/items/embeddings", dependencies=auth, tags=["items"],
             response_model=ItemEmbeddingsOut, responses=errors(401, 404, 409, 422, 503))
    async def item_embeddings(
        domain: Annotated[str | None, Query(max_length=DOMAIN_MAX)] = None,
        version: Annotated[str | None, Query(pattern=VERSION_RE.pattern,
                                             description=VERSION_DOC)] = None,
        offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
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
    @app.get("/v1/models", dependencies=auth, tags=["models"], response_model=ModelsOut,
             responses=errors(401))
    async def models() -> Response:
        """Registry versions, the registry's ACTIVE one and the one this server serves."""
        active = registry.active_version()
        serving = service.model
        pin = registry.pinned()
        return _json({
            "active": active,
            "serving": serving.version if serving else None,
            "pinned": pin.to_json() if pin else None,
            "held": sorted(registry.held_versions()),
            "versions": [
                {"version": mv.version, "kind": mv.kind, "parent": mv.parent,
                 "created_at": mv.created_at, "metrics": mv.manifest.get("metrics") or {},
                 "load_failed": manager.failed.get(mv.version)}
                for mv in registry.list()
            ],
        })

    admin = [Depends(admin_auth)]

    @app.post("/v1/models/rollback", dependencies=admin, tags=["admin"],
              response_model=RolledBackOut, responses=errors(401, 403, 409))
    async def rollback() -> Response:
        """Re-activate the previously active version (loaded and warmed before the switch)."""
        try:
            model = await manager.rollback()
        except RegistryError as exc:
            raise HTTPException(409, str(exc)) from None
        except ModelLoadError as exc:
            raise HTTPException(409, f"rollback target could not be loaded: {exc}") from None
        return _json({"active": model.version, "kind": model.kind})

    @app.post("/v1/models/{version}/activate", dependencies=admin, tags=["admin"],
              response_model=ActivatedOut, responses=errors(401, 403, 404, 409, 422))
    async def activate(version: VersionId) -> Response:
        """Verify, load and warm `version`, then make it active here and in the registry."""
        with _version_errors(version):
            model = await manager.activate(version)
        return _json({"active": model.version, "kind": model.kind,
                "load_seconds": round(model.load_seconds, 3)})

    @app.post("/v1/models/{version}/pin", dependencies=admin, tags=["admin"],
              response_model=PinnedOut, responses=errors(401, 403, 404, 409, 422))
    async def pin(version: VersionId) -> Response:
        """Hold `version` active (loaded and warmed first if it is not): the trainer keeps
        training but publishes its new versions inactive until `/v1/models/unpin`."""
        with _version_errors(version):
            if registry.active_version() != version:
                await manager.activate(version)  # verifies, loads, warms, moves ACTIVE
            mv = await asyncio.get_running_loop().run_in_executor(
                None, lambda: registry.pin(version, verify=False))
        held = registry.pinned()
        return _json({"active": mv.version, "kind": mv.kind,
                      "pinned": held.to_json() if held else None})

    @app.delete("/v1/users/{user_id}", dependencies=admin, tags=["admin"], status_code=202,
                response_model=UserDeletedOut, responses={**errors(401, 403, 422), 503: {
                    "model": ErrorOut, "description": "The broker did not take the deletion "
                    "(or serving runs without Kafka)."}})
    async def delete_user(user_id: EventUserId) -> Response:
        """Erase a user: publish a `delete_user` record to `interactions` (docs/contracts.md).
        The stream worker removes the user's MeKB, df and N included; this replica and
        cache drop the user at the tombstone that follows on mekb-updates."""
        if cfg.delete_user is None:
            raise HTTPException(503, "user deletion needs Kafka (serving runs without it)")
        from aiokafka.errors import KafkaError

        try:
            # (a broker that does not answer: the client would wait for its own timeouts)
            published = await asyncio.wait_for(cfg.delete_user(user_id), DELETE_TIMEOUT_S)
        except (KafkaError, OSError) as exc:  # OSError: TimeoutError included
            raise HTTPException(503, f"deletion not published: {type(exc).__name__}: "
                                f"{exc}") from None
        return _json({"user_id": published.user_id, "status": "accepted",
                      "partition": published.partition, "offset": published.offset}, 202)

    @app.post("/v1/models/unpin", dependencies=admin, tags=["admin"],
              response_model=UnpinnedOut, responses=errors(401, 403))
    async def unpin() -> Response:
        """Release the pin: the trainer's next version that passes the gate becomes active."""
        released = await asyncio.get_running_loop().run_in_executor(None, registry.unpin)
        return _json({"unpinned": released.version if released else None})

    # --- operations -------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"], response_model=HealthOut)
    async def healthz() -> Response:
        """The process is up and its event loop answers; `shard` is the share of users
        this replica serves (i/n, 0/1 = all)."""
        return _json({"status": "ok", "shard": str(cfg.shards.shard) if cfg.shards else "0/1"})

    @app.get("/readyz", tags=["ops"], response_model=ReadyOut, responses={
        503: {"model": ReadyOut, "description": "Not ready: the body says why."},
        **errors(422)})
    async def readyz(
        allow_stale: Annotated[bool, Query(
            description="Ready also while the replica is stale (the broker has not answered "
            "for MEKB_SERVING_UPSTREAM_TIMEOUT_S): for deployments that prefer answers "
            "flagged `replica_stale` over none during a broker outage.")] = False,
    ) -> Response:
        """200 when a model version is loaded, the replica has caught up and is fresh
        (the broker answered within MEKB_SERVING_UPSTREAM_TIMEOUT_S); 503 otherwise."""
        model = service.model
        ready = service.ready or (allow_stale and service.can_serve)
        service.metrics.ready.set(1 if service.ready else 0)
        body = {"ready": ready, "model_version": model.version if model else None,
                "replica_caught_up": service.replica_caught_up,
                "replica_stale": service.replica_stale}
        return _json(body, 200 if ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response, responses={
        200: {"description": "Prometheus text exposition format",
              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service.metrics.ready.set(1 if service.ready else 0)
        return Response(generate_latest(registry_metrics), media_type=CONTENT_TYPE_LATEST)

    _document_limits(app, cfg)
    return app


def _document_limits(app: FastAPI, cfg: ApiConfig) -> None:
    """Put the configured limits into /openapi.json. The handlers check them with their
    own messages ("k: at most 1000, got 5000"); the declarations (module level, resolved
    before any config exists) cannot name them, so without this a client would read
    "any k >= 1" and get 422 for a value the schema allows."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        spec = app.openapi_schema
        if spec is None:
            spec = build()  # cached by FastAPI in app.openapi_schema, patched once here
            batch = spec["components"]["schemas"]["BatchRequest"]["properties"]["user_ids"]
            batch["maxItems"] = cfg.max_batch_ids
            recs = spec["paths"]["/v1/users/{user_id}/recommendations"]["get"]
            for param in recs["parameters"]:
                if param["name"] == "k":
                    param["schema"]["maximum"] = cfg.max_k
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
