"""`mekb serve` assembled from Settings: replica, service, model manager, Kafka inputs, app.

Start order: open the replica (RocksDB) → app lifespan starts the batcher and the
refresher → the model watcher loads the registry's ACTIVE version in the background
(/healthz answers meanwhile, /readyz says 503) → the mekb-updates follower resumes
from the replica's stored offsets → the model-updates follower wakes the watcher.
Stop order is the reverse; uvicorn drains in-flight requests first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from mekb.registry import Registry, registry_root
from mekb.settings import Settings
from serving.app import ApiConfig, create_app
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.model import load_model
from serving.replica import Replica
from serving.service import EmbeddingService
from serving.sharding import Shard, ShardMap

logger = logging.getLogger(__name__)


class ServeConfigError(ValueError):
    """A setting combination `mekb serve` refuses (printed as one line by the CLI)."""


def replica_dir(settings: Settings) -> Path:
    return settings.serving_replica_dir or settings.data_dir / "serving" / "replica"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_config(settings: Settings) -> ApiConfig:
    keys = tuple(
        k.strip() for k in (settings.serving_api_keys.get_secret_value()
                            if settings.serving_api_keys else "").split(",") if k.strip()
    )
    if not keys and not is_loopback(settings.serving_host):
        raise ServeConfigError(
            f"refusing to serve on {settings.serving_host} without API keys: set "
            "MEKB_SERVING_API_KEYS or bind 127.0.0.1"
        )
    admin = settings.serving_admin_key.get_secret_value() if settings.serving_admin_key else None
    if admin is not None and admin in keys:
        raise ServeConfigError("MEKB_SERVING_ADMIN_KEY must differ from every user API key")
    try:
        shard = Shard.parse(settings.serving_shard)
    except ValueError as exc:
        raise ServeConfigError(f"MEKB_SERVING_SHARD: {exc}") from None
    return ApiConfig(
        api_keys=keys, admin_key=admin or None,
        max_batch_ids=settings.serving_max_batch_ids, max_k=settings.serving_max_k,
        shards=ShardMap(shard, settings.partitions),
    )


@dataclass
class Server:
    app: Any
    service: EmbeddingService
    manager: ModelManager
    replica: Replica


def build(settings: Settings, *, kafka: bool = True) -> Server:
    from prometheus_client import CollectorRegistry

    from mekb.registry import Announcer

    config = api_config(settings)
    prom = CollectorRegistry()
    metrics = ServingMetrics(prom)
    replica = Replica(replica_dir(settings))
    service = EmbeddingService(
        replica, metrics,
        cache_users=settings.serving_cache_users,
        batch_max=settings.serving_batch_max,
        batch_wait_s=settings.serving_batch_wait_ms / 1000.0,
        refresh_batch=settings.serving_refresh_batch,
        refresh_max_lag_s=settings.serving_refresh_max_lag_s,
    )
    service.upstream_timeout_s = settings.serving_upstream_timeout_s
    service.follows_upstream = kafka
    registry = Registry(registry_root(settings))
    announcer = Announcer(settings, timeout_s=5.0) if kafka else None
    loader = partial(_load, device=settings.serving_device,
                     threads=settings.serving_intra_op_threads)
    manager = ModelManager(
        registry, service, loader=loader,
        announcer=announcer,
        prewarm_s=settings.serving_swap_prewarm_s,
    )
    stop = asyncio.Event()
    wake = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    deleter = None
    if kafka:
        from mekb.erasure import UserDeleter

        deleter = UserDeleter(settings)

        async def delete_user(user_id: str) -> Any:
            return (await deleter.delete([user_id]))[0]

        config = replace(config, delete_user=delete_user)

    async def startup() -> None:
        from serving.updates import follow_mekb_updates, follow_model_updates, supervise

        stop.clear()
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(
            manager.watch(settings.serving_registry_poll_s, wake), name="model-watch"))
        if kafka:
            tasks.append(loop.create_task(supervise(
                "mekb-updates follower", stop,
                lambda: follow_mekb_updates(settings, replica, service, stop,
                                            config.shards))))
            tasks.append(loop.create_task(supervise(
                "model-updates follower", stop,
                lambda: follow_model_updates(settings, wake, stop))))
        else:
            service.replica_caught_up = True

    async def shutdown() -> None:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if deleter is not None:
            await deleter.close()
        if announcer is not None:
            await asyncio.to_thread(announcer.close)
        replica.close()

    config.extra_startup.append(startup)
    config.extra_shutdown.append(shutdown)
    app = create_app(service, manager, prom, config)
    return Server(app, service, manager, replica)


def _load(registry: Registry, version: str, *, device: Any, threads: int) -> Any:
    return load_model(registry, version, device=device, intra_op_threads=threads)


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles the signals and drains requests)."""
    import uvicorn

    server = build(settings)
    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = _http_protocol("httptools" if _has("httptools") else "h11")
    uv = _Uvicorn(uvicorn.Config(
        server.app, host=settings.serving_host, port=settings.serving_port, loop=loop,
        http=http, access_log=False, log_config=None, timeout_graceful_shutdown=10,
        lifespan="on",
    ))
    logger.info("serving on http://%s:%d (docs /docs, metrics /metrics, replica %s)",
                settings.serving_host, settings.serving_port, replica_dir(settings))
    uv.run()


def _uvicorn_server() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process
        would die by the signal (exit -15); a completed drain is a clean stop here:
        exit 0, which is what `mekb up` and service managers expect."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def _Uvicorn(config: Any) -> Any:  # noqa: N802 - a class factory used like a class
    return _uvicorn_server()(config)


# Lingering close, as nginx and Apache do it. The API refuses some requests before
# reading their body (401/413 with `Connection: close`, serving/app.py `_HttpMiddleware`),
# and uvicorn then closes the socket with the rest of the upload unread in the kernel's
# receive buffer. A close with unread data makes the kernel send a TCP reset instead of a
# FIN: a client still sending gets ECONNRESET/EPIPE on its next write and most stop there
# without reading the answer (some TCP stacks even drop the received answer on a reset).
# So such a close half-closes instead (the FIN follows the answer), then reads and
# discards what the client still sends until the client closes its side, LINGER_S
# passes or LINGER_BYTES were discarded, whichever comes first. Memory stays flat.
LINGER_S = 2.0
# Above what the two socket buffers can already hold when the answer goes out (the
# tcp_rmem + tcp_wmem maxima: 10 MiB with Linux's defaults, ~36 MiB on hosts tuned for
# fast links), so a client that stops sending when it sees the answer is not cut off by
# it; on a fast link it bounds the reading a refused connection costs before LINGER_S.
LINGER_BYTES = 64 << 20


class _LingeringTransport:
    """The transport as uvicorn's protocol sees it. uvicorn closes the connection itself
    right after an answer's last byte (the app's `send` cannot keep it open), so this is
    where a close can linger: close() goes to the protocol's `_close`, and uvicorn sees a
    lingering connection as closing (no keep-alive, no further request)."""

    def __init__(self, transport: asyncio.Transport, protocol: _LingeringClose) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol._close()

    def is_closing(self) -> bool:
        return self._protocol._linger is not None or self._transport.is_closing()


class _LingeringClose:
    """Mixed into uvicorn's HTTP protocol class (httptools or h11: both call
    `transport.close()` after a `Connection: close` answer and keep the request's state in
    `self.cycle`): lingers when that answer went out before the request body was all read.
    The client's EOF ends the lingering early: uvicorn's eof_received returns None, so
    the transport closes itself."""

    _linger: asyncio.TimerHandle | None = None
    _discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[misc]

    def _close(self) -> None:
        cycle = getattr(self, "cycle", None)
        unread = cycle is not None and cycle.response_complete and cycle.more_body
        if (self._linger is not None or not unread or self._raw.is_closing()
                or not self._raw.can_write_eof()):
            # nothing unread, a second close (server shutdown) or no half-close (TLS)
            self._raw.close()
            return
        self._raw.write_eof()
        self.flow.resume_reading()  # type: ignore[attr-defined]  # uvicorn paused it
        self._linger = self.loop.call_later(  # type: ignore[attr-defined]
            LINGER_S, self._raw.close)

    def data_received(self, data: bytes) -> None:
        if self._linger is None:
            super().data_received(data)  # type: ignore[misc]
            return
        # Discarded, not parsed: the connection answers nothing more.
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            self._raw.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)  # type: ignore[misc]


def _http_protocol(name: str) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol `name` ("httptools" or "h11") with the lingering close."""
    base: type[asyncio.Protocol]
    if name == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return type(f"Lingering{base.__name__}", (_LingeringClose, base), {})


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
