"""Which model version serves: follows the registry's ACTIVE pointer, hot-swaps safely.

A new version is verified (sha256 of every file), loaded and warmed on a worker
thread while the old one keeps serving, then (another user tower) pre-warmed with
the most recently used users for up to MEKB_SERVING_SWAP_PREWARM_S; only then is it
handed to
`EmbeddingService.activate` (one reference assignment). A version that fails is
counted, logged and remembered, so a broken publication is not retried in a loop;
the old version keeps serving.

Admin activation and rollback load the target FIRST and move the registry pointer
only once this server has it warm, so a version that cannot load is refused with
the reason instead of leaving the fleet pointed at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from functools import partial

from mekb.registry import Registry
from serving.encoder import import_kinds
from serving.model import LoadedModel, ModelLoadError, load_model
from serving.service import EmbeddingService

logger = logging.getLogger(__name__)

Loader = Callable[[Registry, str], LoadedModel]
Announcer = Callable[[str], None]


class ModelManager:
    def __init__(
        self,
        registry: Registry,
        service: EmbeddingService,
        *,
        loader: Loader | None = None,
        announcer: Announcer | None = None,
        prewarm_s: float = 0.0,
    ) -> None:
        self.registry = registry
        self.service = service
        self.loader: Loader = loader or partial(load_model)
        self.announcer = announcer
        self.prewarm_s = prewarm_s
        self.failed: dict[str, str] = {}  # version -> reason (not retried automatically)
        self._lock = asyncio.Lock()

    @property
    def active(self) -> LoadedModel | None:
        return self.service.model

    async def _load(self, version: str) -> LoadedModel:
        metrics = self.service.metrics
        start = time.perf_counter()
        try:
            model = await asyncio.get_running_loop().run_in_executor(
                None, self.loader, self.registry, version
            )
        except ModelLoadError as exc:
            metrics.model_load_failures.inc()
            self.failed[version] = str(exc)
            logger.error("model %s not loaded, keeping %s: %s", version,
                         self.active.version if self.active else None, exc)
            raise
        metrics.model_load_seconds.observe(time.perf_counter() - start)
        self.failed.pop(version, None)
        await self.service.prewarm(model, self.prewarm_s)
        return model

    async def sync(self) -> bool:
        """Load the registry's ACTIVE version if it is not the one serving. True = swapped."""
        wanted = self.registry.active_version()
        if wanted is None or (self.active is not None and self.active.version == wanted):
            return False
        if wanted in self.failed:
            return False
        async with self._lock:
            if self.active is not None and self.active.version == wanted:
                return False
            try:
                model = await self._load(wanted)
            except ModelLoadError:
                return False
            # ACTIVE may have moved on while we loaded; the next sync picks that up.
            self.service.activate(model)
            return True

    async def activate(self, version: str) -> LoadedModel:
        """Admin: load `version`, move ACTIVE to it, swap. Raises ModelLoadError/RegistryError."""
        async with self._lock:
            self.registry.get(version)  # VersionNotFound before any work
            if self.active is not None and self.active.version == version:
                model = self.active
            else:
                model = await self._load(version)
            await asyncio.get_running_loop().run_in_executor(
                None, partial(self.registry.activate, version, verify=False)
            )
            self.service.activate(model)
        self._announce(version)
        return model

    async def rollback(self) -> LoadedModel:
        """Admin: re-activate the previously active version (loaded before the pointer moves)."""
        async with self._lock:
            target = self.registry.rollback_target()
            model = await self._load(target)
            mv = await asyncio.get_running_loop().run_in_executor(None, self.registry.rollback)
            if mv.version != target:  # the history moved under us: serve what ACTIVE says
                model = await self._load(mv.version)
            self.service.activate(model)
        self._announce(model.version)
        return model

    def _announce(self, version: str) -> None:
        if self.announcer is None:
            return
        loop = asyncio.get_running_loop()

        def send() -> None:
            try:
                assert self.announcer is not None
                self.announcer(version)
            except Exception as exc:  # other replicas poll ACTIVE anyway
                logger.warning("model-updates announcement of %s failed: %s", version, exc)

        loop.run_in_executor(None, send)

    async def watch(self, poll_s: float, wake: asyncio.Event) -> None:
        """Follow ACTIVE: on a model-updates event (`wake`) or every `poll_s` seconds.
        First, import what the loaders of every kind in the registry need (before any
        request is served: see serving.encoder.import_kinds)."""
        try:
            kinds = {mv.model_kind for mv in await asyncio.to_thread(self.registry.list)}
            modules = await asyncio.to_thread(import_kinds, kinds)
            logger.info("model kinds in the registry: %s (imported %s)",
                        ", ".join(sorted(kinds)) or "none", ", ".join(modules) or "nothing")
        except Exception:  # the loads import them later, as before
            logger.exception("model kinds not imported ahead of loading")
        # The imported modules' objects (millions with torch) live as long as the process:
        # out of the cyclic GC's sight, a full collection under load takes milliseconds
        # instead of hundreds of them (measured: 381 ms). Before any request is served.
        gc.collect()
        gc.freeze()
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # a registry hiccup must not stop the watcher
                logger.exception("model sync failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=poll_s)
            wake.clear()
