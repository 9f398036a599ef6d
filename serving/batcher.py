"""Dynamic batching of encoder work: request misses first, background refreshes after.

Greedy batching: while one ONNX Runtime run is busy, new sequences queue; the
next run takes everything queued (up to `max_batch`), so batches grow with load
without adding a timer to an idle server's latency. A background (refresher)
batch is formed only when no request is waiting and is kept small, so a cache
miss waits behind at most one short refresh run.

Runs execute one at a time on a dedicated thread: ONNX Runtime parallelises
inside each run (intra-op threads) and releases the GIL, so the event loop keeps
answering cache hits meanwhile. A batch only holds sequences of one model, so
user embeddings are never computed by a different version than the request pinned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

Priority = Literal["request", "refresh"]
# model -> (per-user inputs of its kind -> (embeddings, session.run seconds))
EncodeFn = Callable[[Any, list[Any]], tuple[np.ndarray, float]]


@dataclass
class _Item:
    model: Any
    text: Any  # the model kind's per-user input (EmbedMe: the text)
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        encode: EncodeFn,
        metrics: ServingMetrics,
        *,
        max_batch: int = 32,
        refresh_batch: int = 8,
        wait_s: float = 0.0,
    ) -> None:
        self.encode = encode
        self.metrics = metrics
        self.max_batch = max_batch
        self.refresh_batch = refresh_batch
        self.wait_s = wait_s
        self._queues: dict[Priority, deque[_Item]] = {"request": deque(), "refresh": deque()}
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        self._task: asyncio.Task[None] | None = None
        self.last_run_seconds = 0.0  # wall time of the last run (refresher capacity)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for queue in self._queues.values():
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(RuntimeError("server shutting down"))
            queue.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def pending(self, priority: Priority) -> int:
        return len(self._queues[priority])

    async def submit(self, model: Any, texts: list[Any], priority: Priority) -> np.ndarray:
        """Embeddings [len(texts), dim] computed by `model`."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        loop = asyncio.get_running_loop()
        items = [_Item(model, t, loop.create_future()) for t in texts]
        self._queues[priority].extend(items)
        self._wakeup.set()
        try:
            rows = await asyncio.gather(*(i.future for i in items))
        except asyncio.CancelledError:
            for item in items:  # a disconnected client's work is dropped, not computed
                item.future.cancel()
            raise
        return np.stack(rows)

    def _take(self) -> tuple[Priority, list[_Item]] | None:
        order: tuple[tuple[Priority, int], ...] = (
            ("request", self.max_batch), ("refresh", self.refresh_batch))
        for priority, limit in order:
            queue = self._queues[priority]
            while queue and queue[0].future.done():
                queue.popleft()  # cancelled
            if not queue:
                continue
            head = queue[0].model
            # a model may want larger runs than the defaults (LoadedModel.batch_max)
            limit = max(limit, getattr(head, "batch_max", 0))
            batch: list[_Item] = []
            while queue and len(batch) < limit and queue[0].model is head:
                item = queue.popleft()
                if not item.future.done():
                    batch.append(item)
            if batch:
                return priority, batch
        return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = self._take()
            if taken is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                if self.wait_s > 0:
                    await asyncio.sleep(self.wait_s)
                continue
            priority, batch = taken
            start = time.perf_counter()
            for item in batch:
                self.metrics.queue_wait_seconds.labels(priority).observe(start - item.enqueued)
            self.metrics.batch_size.labels(priority).observe(len(batch))
            try:
                out, run_s = await loop.run_in_executor(
                    self._executor, self.encode, batch[0].model, [i.text for i in batch]
                )
            except asyncio.CancelledError:  # shutting down mid-run: nobody is left hanging
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("server shutting down"))
                raise
            except Exception as exc:  # a failed run fails its requests, not the loop
                logger.exception("encoder run failed for a batch of %d", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError(f"encoder failed: {exc}"))
                continue
            self.last_run_seconds = time.perf_counter() - start
            self.metrics.inference_seconds.observe(run_s)
            for n, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(out[n])
