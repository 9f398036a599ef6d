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

    from mekb.registry import announce

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
    loader = partial(_load, device=settings.serving_device,
                     threads=settings.serving_intra_op_threads)
    manager = ModelManager(
        registry, service, loader=loader,
        announcer=(lambda v: announce(settings, v, timeout_s=5.0)) if kafka else None,
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
    http = "httptools" if _has("httptools") else "h11"
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


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
