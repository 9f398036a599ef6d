"""Dynamic batching of encoder work: request misses first, background refreshes after.

Greedy batching: while one ONNX Runtime run is busy, new sequences queue; the
next run takes everything queued (up to `max_batch`; a submit's sequences queue as
chunks, never split across runs), so batches grow with load
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


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """`histogram.observe(v)` for every v, in one pass: at EntityGraph's refresh rates
    (10^4 users/s, several histograms per user) per-value observe() calls are a tenth of
    the event loop's time. Uses prometheus_client's bucket counters directly (stable
    since 0.4; tests/unit/test_serving_replica.py checks it against observe())."""
    if len(values) == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(np.sum(values)))


@dataclass
class _Item:
    """A chunk of one submit: never split across runs, at most one run's worth; one
    future per chunk, not per user (a refresh of 512 users is one item, not 512)."""

    model: Any
    inputs: list[Any]  # the model kind's per-user inputs (EmbedMe: the texts)
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

    def _limit(self, priority: Priority, model: Any) -> int:
        """Users per run: a model may want larger runs than the defaults (batch_max)."""
        default = self.max_batch if priority == "request" else self.refresh_batch
        return max(default, getattr(model, "batch_max", 0))

    async def submit(self, model: Any, texts: list[Any], priority: Priority) -> np.ndarray:
        """Embeddings [len(texts), dim] computed by `model`."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        loop = asyncio.get_running_loop()
        step = self._limit(priority, model)
        items = [_Item(model, texts[n:n + step], loop.create_future())
                 for n in range(0, len(texts), step)]
        self._queues[priority].extend(items)
        self._wakeup.set()
        try:
            parts = await asyncio.gather(*(i.future for i in items))
        except asyncio.CancelledError:
            for item in items:  # a disconnected client's work is dropped, not computed
                item.future.cancel()
            raise
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _take(self) -> tuple[Priority, list[_Item]] | None:
        for priority in ("request", "refresh"):
            queue = self._queues[priority]
            while queue and queue[0].future.done():
                queue.popleft()  # cancelled
            if not queue:
                continue
            head = queue[0].model
            limit = self._limit(priority, head)
            batch: list[_Item] = []
            size = 0
            while queue and queue[0].model is head and (
                    not batch or size + len(queue[0].inputs) <= limit):
                item = queue.popleft()
                if not item.future.done():
                    batch.append(item)
                    size += len(item.inputs)
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
            inputs: list[Any] = []
            for item in batch:
                inputs.extend(item.inputs)
            # per sequence, as the metric says
            observe_many(self.metrics.queue_wait_seconds.labels(priority), np.repeat(
                [start - item.enqueued for item in batch], [len(i.inputs) for i in batch]))
            self.metrics.batch_size.labels(priority).observe(len(inputs))
            try:
                out, run_s = await loop.run_in_executor(
                    self._executor, self.encode, batch[0].model, inputs
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
            at = 0
            for item in batch:
                n = len(item.inputs)
                if not item.future.done():
                    # a copy unless the run was this chunk alone: a cached row must not
                    # keep the whole run's output alive
                    item.future.set_result(out if n == len(out) else out[at:at + n].copy())
                at += n
