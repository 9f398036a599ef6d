"""The drift monitor process: entity-distribution drift from `mekb-updates`,
embedding drift between consecutive model versions from `model-updates`.

The probe set is fixed: the first `probe_size` distinct users seen (their MeKB
text at that moment), persisted so restarts compare on the same users.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.drift import WindowedEntityDistribution, embedding_drift
from monitoring.metrics import MonitorMetrics

logger = logging.getLogger(__name__)

# (version, texts) -> user embeddings [n, K]; and version -> (item_ids, item matrix)
EncodeFn = Callable[[str, list[str]], np.ndarray]
ItemsFn = Callable[[str], tuple[list[str], np.ndarray]]


class ProbeSet:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.texts: dict[str, str] = {}
        if path.exists():
            self.texts = json.loads(path.read_text())

    @property
    def full(self) -> bool:
        return len(self.texts) >= self.size

    def offer(self, user_id: str, text: str) -> None:
        if self.full or user_id in self.texts or not text:
            return
        self.texts[user_id] = text
        if self.full:
            self._save()

    def forget(self, user_id: str) -> None:
        """A deleted (or expired) user leaves the probe, on disk too; the next user
        offered takes the place."""
        if self.texts.pop(user_id, None) is not None and self.path.exists():
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.texts))
        tmp.replace(self.path)


class DriftMonitor:
    """Consumes update records; keeps the drift gauges current."""

    def __init__(
        self,
        metrics: MonitorMetrics,
        window_s: float,
        probe: ProbeSet,
        encode: EncodeFn | None = None,
        items: ItemsFn | None = None,
    ) -> None:
        self.metrics = metrics
        self.window = WindowedEntityDistribution(window_s)
        self.probe = probe
        self.encode = encode
        self.items = items

    def on_mekb_update(self, record: dict[str, Any]) -> None:
        from mekb.scoring import sequence_text

        self.metrics.updates.inc()
        entities = record.get("entities") or []
        ids = [e["id"] for e in entities]
        closed = self.window.observe(str(record["user_id"]), ids, float(record["ts"]))
        for psi_value, js_value in closed:
            self.metrics.entity_psi.set(psi_value)
            self.metrics.entity_js.set(js_value)
            self.metrics.windows.inc()
        self.probe.offer(str(record["user_id"]), sequence_text([e["title"] for e in entities]))
        self.metrics.probe_users.set(len(self.probe.texts))

    def on_model_update(self, record: dict[str, Any]) -> None:
        """Compare the new version with its parent on the probe users."""
        version, parent = record.get("version"), record.get("parent")
        if not (version and parent and self.encode and self.items and self.probe.texts):
            return
        texts = list(self.probe.texts.values())
        old_ids, old_items = self.items(parent)
        new_ids, new_items = self.items(version)
        common = sorted(set(old_ids) & set(new_ids))
        if not common:
            return
        old_rows = {i: n for n, i in enumerate(old_ids)}
        new_rows = {i: n for n, i in enumerate(new_ids)}
        drift = embedding_drift(
            self.encode(parent, texts),
            self.encode(version, texts),
            old_items[[old_rows[i] for i in common]],
            new_items[[new_rows[i] for i in common]],
        )
        if not np.isnan(drift.mean_cosine_shift):
            self.metrics.embedding_cosine_shift.set(drift.mean_cosine_shift)
        self.metrics.embedding_topk_overlap.set(drift.topk_overlap)
        logger.info("embedding drift %s -> %s: %s", parent, version, drift)


async def run_monitor(settings: Any, monitor: DriftMonitor, stop: asyncio.Event) -> None:
    """Consume mekb-updates and model-updates until `stop` is set."""
    from aiokafka import AIOKafkaConsumer

    from mekb.kafka_config import aiokafka_config, profile

    updates, models = settings.topic("mekb-updates"), settings.topic("model-updates")
    consumer = AIOKafkaConsumer(
        updates, models, **aiokafka_config(settings), group_id=settings.topic("mekb-monitor"),
        auto_offset_reset="latest", enable_auto_commit=True,
        session_timeout_ms=profile(settings).session_timeout_ms,
        heartbeat_interval_ms=profile(settings).heartbeat_interval_ms,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for tp, records in batches.items():
                for rec in records:
                    if rec.value is None:  # mekb-updates tombstone: the user is gone
                        if rec.key:
                            monitor.probe.forget(rec.key.decode("utf-8", "replace"))
                        continue
                    try:
                        value = json.loads(rec.value)
                        if tp.topic == updates:
                            monitor.on_mekb_update(value)
                        else:
                            await asyncio.to_thread(monitor.on_model_update, value)
                    except (ValueError, KeyError, TypeError) as exc:
                        logger.warning("monitor skipped a bad %s record: %s", tp.topic, exc)
    finally:
        await consumer.stop()
