"""Sync and async clients of the embedding service (`mekb serve`).

Both run the same call logic, written once as generators that yield the HTTP calls
they need and receive the decoded answers (`_Flows`): `Client` drives them with
`httpx.Client`, `AsyncClient` with `httpx.AsyncClient`.

Retries: a call that could not be sent (connection refused, connect timeout) is retried
whatever it is; a call that may have reached the server (read timeout, connection reset,
429, 5xx) only when repeating it is harmless — every read, not the admin actions. Waits
grow exponentially (`Retry`), with jitter, and a `Retry-After` header is honoured. 4xx
are never retried: the request itself is wrong.

Version pinning: a client made with `model_version=V` raises ModelVersionMismatch for any
answer computed by another version, and asks for V where the API can be asked (item
embeddings). Batch calls split the ids into requests of `batch_size` and return the
embeddings of one model version: if the service switched versions between two requests,
the batch is asked again (`Retry.attempts` times) before that is an error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from mekb_client.errors import (
    ModelVersionMismatch,
    TransportError,
    WrongShard,
    error_for,
)
from mekb_client.models import (
    BatchEmbeddings,
    ItemEmbeddings,
    Models,
    Ready,
    Recommendations,
    UserEmbedding,
    UserMeKB,
)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Failures before the request left the client: safe to repeat for any call.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after it may have reached the server: repeated for idempotent calls only.
MAYBE_SENT = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.WriteError,
              httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Retry:
    """`attempts` tries in all; the wait before try n+1 is backoff_s * 2**(n-1), at most
    backoff_max_s, ± `jitter` of itself (many clients restarting together spread out), and
    at least a 429/503's `Retry-After` seconds (up to backoff_max_s)."""

    attempts: int = 4
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    jitter: float = 0.2

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        base = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        wait = base * (1 + self.jitter * (2 * random.random() - 1))
        if retry_after is not None and retry_after.strip().isdigit():  # (not an HTTP date)
            wait = max(wait, min(self.backoff_max_s, float(retry_after)))
        return wait


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    admin: bool = False
    idempotent: bool = True
    accept: frozenset[int] = frozenset()  # error statuses that are answers (readyz: 503)


class _Flows:
    """What every call asks and how it reads the answer; no I/O."""

    def __init__(self, base_url: str, api_key: str | None, admin_key: str | None,
                 model_version: str | None, retry: Retry, batch_size: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.admin_key = admin_key
        self.model_version = model_version
        self.retry = retry
        self.batch_size = batch_size

    def headers(self, call: Call) -> dict[str, str]:
        key = self.admin_key if call.admin else self.api_key
        return {"X-API-Key": key} if key else {}

    def check(self, got: str, what: str) -> None:
        if self.model_version is not None and got != self.model_version:
            raise ModelVersionMismatch(self.model_version, got, what)

    def embedding(self, user_id: str, allow_stale: bool
                  ) -> Generator[Call, Any, UserEmbedding]:
        body = yield Call("GET", f"/v1/users/{_seg(user_id)}/embedding",
                          {"allow_stale": "true"} if allow_stale else None)
        result = UserEmbedding.from_json(body)
        self.check(result.model_version, f"embedding of user {user_id!r}")
        return result

    def embeddings(self, user_ids: Sequence[str], allow_stale: bool
                   ) -> Generator[Call, Any, BatchEmbeddings]:
        ids = list(user_ids)
        if not ids:
            raise ValueError("user_ids: at least one id")
        versions: set[str] = set()
        for _ in range(self.retry.attempts):
            pages = []
            for start in range(0, len(ids), self.batch_size):
                pages.append((yield Call("POST", "/v1/users/embeddings", json={
                    "user_ids": ids[start:start + self.batch_size],
                    "allow_stale": allow_stale})))
            versions = {p["model_version"] for p in pages}
            for version in versions:
                self.check(version, f"embeddings of {len(ids)} users")
            if len(versions) == 1:  # the service switched versions mid-batch: ask again
                return BatchEmbeddings(
                    pages[0]["model_version"], pages[0]["dim"],
                    [UserEmbedding.from_json(e) for p in pages for e in p["embeddings"]])
        raise ModelVersionMismatch(pages[0]["model_version"], pages[-1]["model_version"],
                                   f"embeddings of {len(ids)} users: versions "
                                   f"{sorted(versions)} across {self.retry.attempts} tries")

    def mekb(self, user_id: str) -> Generator[Call, Any, UserMeKB]:
        body = yield Call("GET", f"/v1/users/{_seg(user_id)}/mekb")
        return UserMeKB.from_json(body)

    def recommendations(self, user_id: str, domain: str, k: int
                        ) -> Generator[Call, Any, Recommendations]:
        body = yield Call("GET", f"/v1/users/{_seg(user_id)}/recommendations",
                          {"domain": domain, "k": k})
        result = Recommendations.from_json(body)
        self.check(result.model_version, f"recommendations for user {user_id!r}")
        return result

    def item_embeddings(self, domain: str | None, version: str | None, offset: int,
                        limit: int | None) -> Generator[Call, Any, ItemEmbeddings]:
        params: dict[str, Any] = {"offset": offset}
        for name, value in (("domain", domain), ("version", version or self.model_version),
                            ("limit", limit)):
            if value is not None:
                params[name] = value
        body = yield Call("GET", "/v1/items/embeddings", params)
        result = ItemEmbeddings.from_json(body)
        self.check(result.model_version, "item embeddings")
        return result

    def models(self) -> Generator[Call, Any, Models]:
        return Models.from_json((yield Call("GET", "/v1/models")))

    def ready(self) -> Generator[Call, Any, Ready]:
        return Ready.from_json((yield Call("GET", "/readyz", accept=frozenset({503}))))

    def admin(self, path: str, idempotent: bool) -> Generator[Call, Any, dict[str, Any]]:
        body: dict[str, Any] = yield Call("POST", path, admin=True, idempotent=idempotent)
        return body


def _seg(value: str) -> str:
    """A user id as one path segment (ids may hold '/', '?', spaces...)."""
    return quote(value, safe="")


def _transport_error(call: Call, exc: Exception, attempts: int) -> TransportError:
    return TransportError(f"{call.method} {call.path}: no answer after {attempts} "
                          f"attempt(s): {type(exc).__name__}: {exc}", attempts)


def _retryable(call: Call, exc: Exception) -> bool:
    return isinstance(exc, NOT_SENT) or (call.idempotent and isinstance(exc, MAYBE_SENT))


def _decode(call: Call, response: httpx.Response, attempts: int) -> Any:
    if response.is_success or response.status_code in call.accept:
        return response.json()
    try:
        body = response.json()
        detail = str(body["detail"])
    except (ValueError, KeyError, TypeError):
        body, detail = None, response.text[:500] or response.reason_phrase
    error = error_for(response.status_code, detail, call.method, call.path, attempts)
    if isinstance(error, WrongShard) and isinstance(body, dict):
        error.owners = {str(k): str(v) for k, v in (body.get("owners") or {}).items()}
    raise error


class _Pinnable:
    """The pinned model version, shared by both clients (None: any version)."""

    _flows: _Flows

    @property
    def model_version(self) -> str | None:
        return self._flows.model_version

    @model_version.setter
    def model_version(self, version: str | None) -> None:
        self._flows.model_version = version


class Client(_Pinnable):
    """Blocking client. `timeout`: seconds per request (connect, read, write each);
    `retry`: see Retry; `model_version`: pin (see module doc). Use as a context manager
    or call close()."""

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 admin_key: str | None = None, model_version: str | None = None,
                 timeout: float = 10.0, retry: Retry = Retry(), batch_size: int = 256,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._flows = _Flows(base_url, api_key, admin_key, model_version, retry, batch_size)
        self._http = httpx.Client(base_url=self._flows.base_url, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, call: Call) -> Any:
        retry = self._flows.retry
        for attempt in range(1, retry.attempts + 1):
            last = attempt == retry.attempts
            try:
                response = self._http.request(call.method, call.path, params=call.params,
                                              json=call.json, headers=self._flows.headers(call))
            except httpx.TransportError as exc:
                if last or not _retryable(call, exc):
                    raise _transport_error(call, exc, attempt) from exc
                time.sleep(retry.delay(attempt))
                continue
            if (response.status_code in RETRY_STATUS and call.idempotent and not last
                    and response.status_code not in call.accept):
                time.sleep(retry.delay(attempt, response.headers.get("Retry-After")))
                continue
            return _decode(call, response, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _drive(self, flow: Generator[Call, Any, Any]) -> Any:
        try:
            call = next(flow)
            while True:
                call = flow.send(self._call(call))
        except StopIteration as done:
            return done.value

    def embedding(self, user_id: str, *, allow_stale: bool = False) -> UserEmbedding:
        """The user's embedding (an unknown user: the cold-start embedding)."""
        result: UserEmbedding = self._drive(self._flows.embedding(user_id, allow_stale))
        return result

    def embeddings(self, user_ids: Sequence[str], *, allow_stale: bool = False
                   ) -> BatchEmbeddings:
        """Embeddings of any number of users, all by one model version."""
        result: BatchEmbeddings = self._drive(self._flows.embeddings(user_ids, allow_stale))
        return result

    def mekb(self, user_id: str) -> UserMeKB:
        """The user's MeKB (NotFound when no interaction of theirs was applied)."""
        result: UserMeKB = self._drive(self._flows.mekb(user_id))
        return result

    def recommendations(self, user_id: str, domain: str, k: int = 10) -> Recommendations:
        result: Recommendations = self._drive(self._flows.recommendations(user_id, domain, k))
        return result

    def item_embeddings(self, domain: str | None = None, *, version: str | None = None,
                        offset: int = 0, limit: int | None = None) -> ItemEmbeddings:
        """One page of item embeddings of `version` (default: the pinned one, else the
        served one)."""
        result: ItemEmbeddings = self._drive(
            self._flows.item_embeddings(domain, version, offset, limit))
        return result

    def iter_item_embeddings(self, domain: str | None = None, *, version: str | None = None,
                             page_size: int = 10_000) -> Iterator[ItemEmbeddings]:
        """Every page, all of the first page's version (a swap mid-way cannot mix them)."""
        page = self.item_embeddings(domain, version=version, limit=page_size)
        yield page
        while page.offset + len(page.item_ids) < page.total:
            page = self.item_embeddings(domain, version=page.model_version,
                                        offset=page.offset + len(page.item_ids),
                                        limit=page_size)
            yield page

    def models(self) -> Models:
        result: Models = self._drive(self._flows.models())
        return result

    def ready(self) -> Ready:
        """/readyz: `ready` false (not an error) while the service is not ready."""
        result: Ready = self._drive(self._flows.ready())
        return result

    def activate(self, version: str) -> dict[str, Any]:
        """Admin: load, warm and activate `version` (admin_key)."""
        result: dict[str, Any] = self._drive(
            self._flows.admin(f"/v1/models/{_seg(version)}/activate", True))
        return result

    def pin(self, version: str) -> dict[str, Any]:
        result: dict[str, Any] = self._drive(
            self._flows.admin(f"/v1/models/{_seg(version)}/pin", True))
        return result

    def unpin(self) -> dict[str, Any]:
        result: dict[str, Any] = self._drive(self._flows.admin("/v1/models/unpin", True))
        return result

    def rollback(self) -> dict[str, Any]:
        """Admin: back to the previous version (never repeated on an unclear failure)."""
        result: dict[str, Any] = self._drive(self._flows.admin("/v1/models/rollback", False))
        return result


class AsyncClient(_Pinnable):
    """The same calls as Client, awaitable (httpx.AsyncClient)."""

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 admin_key: str | None = None, model_version: str | None = None,
                 timeout: float = 10.0, retry: Retry = Retry(), batch_size: int = 256,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._flows = _Flows(base_url, api_key, admin_key, model_version, retry, batch_size)
        self._http = httpx.AsyncClient(base_url=self._flows.base_url, timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, call: Call) -> Any:
        retry = self._flows.retry
        for attempt in range(1, retry.attempts + 1):
            last = attempt == retry.attempts
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json,
                    headers=self._flows.headers(call))
            except httpx.TransportError as exc:
                if last or not _retryable(call, exc):
                    raise _transport_error(call, exc, attempt) from exc
                await asyncio.sleep(retry.delay(attempt))
                continue
            if (response.status_code in RETRY_STATUS and call.idempotent and not last
                    and response.status_code not in call.accept):
                await asyncio.sleep(retry.delay(attempt, response.headers.get("Retry-After")))
                continue
            return _decode(call, response, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _drive(self, flow: Generator[Call, Any, Any]) -> Any:
        try:
            call = next(flow)
            while True:
                call = flow.send(await self._call(call))
        except StopIteration as done:
            return done.value

    async def embedding(self, user_id: str, *, allow_stale: bool = False) -> UserEmbedding:
        result: UserEmbedding = await self._drive(self._flows.embedding(user_id, allow_stale))
        return result

    async def embeddings(self, user_ids: Sequence[str], *, allow_stale: bool = False
                         ) -> BatchEmbeddings:
        result: BatchEmbeddings = await self._drive(
            self._flows.embeddings(user_ids, allow_stale))
        return result

    async def mekb(self, user_id: str) -> UserMeKB:
        result: UserMeKB = await self._drive(self._flows.mekb(user_id))
        return result

    async def recommendations(self, user_id: str, domain: str, k: int = 10
                              ) -> Recommendations:
        result: Recommendations = await self._drive(
            self._flows.recommendations(user_id, domain, k))
        return result

    async def item_embeddings(self, domain: str | None = None, *, version: str | None = None,
                              offset: int = 0, limit: int | None = None) -> ItemEmbeddings:
        result: ItemEmbeddings = await self._drive(
            self._flows.item_embeddings(domain, version, offset, limit))
        return result

    async def iter_item_embeddings(self, domain: str | None = None, *,
                                   version: str | None = None, page_size: int = 10_000
                                   ) -> AsyncIterator[ItemEmbeddings]:
        page = await self.item_embeddings(domain, version=version, limit=page_size)
        yield page
        while page.offset + len(page.item_ids) < page.total:
            page = await self.item_embeddings(domain, version=page.model_version,
                                              offset=page.offset + len(page.item_ids),
                                              limit=page_size)
            yield page

    async def models(self) -> Models:
        result: Models = await self._drive(self._flows.models())
        return result

    async def ready(self) -> Ready:
        result: Ready = await self._drive(self._flows.ready())
        return result

    async def activate(self, version: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._drive(
            self._flows.admin(f"/v1/models/{_seg(version)}/activate", True))
        return result

    async def pin(self, version: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._drive(
            self._flows.admin(f"/v1/models/{_seg(version)}/pin", True))
        return result

    async def unpin(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._drive(self._flows.admin("/v1/models/unpin", True))
        return result

    async def rollback(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._drive(
            self._flows.admin("/v1/models/rollback", False))
        return result
