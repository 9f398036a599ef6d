"""Every topic the system uses, in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mekb.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    compacted: bool
    purpose: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("interactions", False, "click/interaction events, key user_id"),
    TopicSpec("items", False, "item create/update events, key item_id"),
    TopicSpec("dead-letters", False, "rejected events with the reason and original bytes"),
    TopicSpec("item-entities", True, "linked entities of every item (compacted), key item_id"),
    TopicSpec("df-partials", True, "per-partition entity document frequencies (compacted), "
              "key <partition>/<entity>"),
    TopicSpec("mekb-changelog", True, "stream worker state changelog (compacted), "
              "co-partitioned with interactions"),
    TopicSpec("training-examples", False, "point-in-time EmbedMe examples"),
    TopicSpec("mekb-updates", True, "latest MeKB per user (compacted), key user_id"),
    TopicSpec("model-updates", False, "a new model version was published"),
)


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic(t.name) for t in TOPICS]


def new_topic_requests(settings: Settings) -> list[Any]:
    """kafka-python NewTopic requests for every topic (state topics compacted)."""
    from kafka.admin import NewTopic

    return [
        NewTopic(
            settings.topic(spec.name),
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
        )
        for spec in TOPICS
    ]


def create_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create every topic (idempotent). Returns the names that were newly created."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    from mekb.kafka_config import kafka_python_config

    admin = KafkaAdminClient(**kafka_python_config(settings), client_id="mekb-topics")
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in new_topic_requests(settings) if t.name not in existing]
        created = []
        for topic in wanted:  # one by one: a race with another creator is not an error
            try:
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


# --- incarnations ---------------------------------------------------------------------
# A stored offset means something only in the topic it was read from. The broker gives
# every topic an id at creation (KIP-516: Apache Kafka >= 2.8 and Tansu): a topic that
# was deleted and created again, or every topic of the embedded broker after a restart
# (it keeps topics in memory only), has a new id while its offsets start at 0 again.
# Components record the id beside the offsets they store (streams/partition.py,
# serving/replica.py, trainer/online/checkpoint.py) and rebase when it changed. The id
# comes from the broker itself, so no writer has to agree on it and topics created by
# any tool are covered.
NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


def topic_ids(settings: Settings, names: list[str]) -> dict[str, str]:
    """The broker's id of each existing topic in `names` (full names). Topics that do not
    exist, and every topic of a broker that has no topic ids, are left out."""
    reader = TopicIdReader(settings)
    try:
        return reader(names)
    finally:
        reader.close()


class TopicIdReader:
    """`topic_ids` with one admin client kept between calls, for components that look
    every ID_CHECK_S: each new KafkaAdminClient bootstraps (metadata, API versions, a
    network thread), tens of milliseconds of Python holding the GIL against the caller's
    event loop (in serving, a cache hit's p99). A failed call drops the client; the next
    one connects again. Calls must not overlap (one caller, one at a time)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin: Any = None

    def __call__(self, names: list[str]) -> dict[str, str]:
        if self._admin is None:
            from kafka.admin import KafkaAdminClient

            from mekb.kafka_config import kafka_python_config

            self._admin = KafkaAdminClient(**kafka_python_config(self.settings),
                                           client_id="mekb-topic-ids")
        try:
            described = self._admin.describe_topics(names)
        except Exception:
            self.close()
            raise
        return {str(t["name"]): str(t["topic_id"]) for t in described
                if t.get("error_code") == 0 and t.get("topic_id") not in (None, NO_TOPIC_ID)}

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()


def rebase_needed(stored: str | None, current: str | None) -> bool:
    """Whether offsets recorded under topic id `stored` are void in the topic now `current`.
    Unknown on either side (state written before ids were recorded, a broker without topic
    ids) keeps the offsets: that was the behaviour before, and callers add a cheaper check
    where they have one (an offset beyond the partition's end)."""
    return stored is not None and current is not None and stored != current


ID_CHECK_S = 5.0  # how often running components look for re-created topics


async def new_topic_ids(settings: Settings, known: dict[str, str], stop: Any,
                        interval_s: float = ID_CHECK_S) -> dict[str, str]:
    """Wait until a topic of `known` (name -> id) has another id: the broker restarted (the
    embedded one starts empty) or the topic was re-created while the caller runs. Returns
    the ids now, or {} once `stop` (an asyncio.Event) is set. A broker that does not
    answer is not a change: the caller's own clients report it."""
    import asyncio
    import contextlib

    names = sorted(known)
    if not names:  # nothing to compare with (a broker without topic ids)
        await stop.wait()
    reader = TopicIdReader(settings)
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            if stop.is_set():
                break
            try:
                now = await asyncio.to_thread(reader, names)
            except Exception as exc:  # noqa: BLE001 - unreachable broker, timeouts: look again
                logger.debug("topic ids not read (%s)", exc)
                continue
            if any(rebase_needed(known[name], now.get(name)) for name in names):
                return now
    finally:
        # (a thread: closing joins the client's network thread)
        await asyncio.shield(asyncio.to_thread(reader.close))
    return {}
