"""The Kafka clients components keep between calls (mekb.topics.TopicIdReader,
mekb.registry.Announcer) against a real broker: one client serves every call, and a
broker that went away (a new incarnation on the same port, as `mekb up` restarts the
embedded one) is followed by a new client, not a stuck one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mekb.broker import EmbeddedBroker
from mekb.registry import Announcer, ModelVersion
from mekb.settings import Settings
from mekb.topics import TopicIdReader, create_topics

pytestmark = pytest.mark.integration


def test_topic_id_reader_keeps_one_client_and_follows_a_new_broker(tmp_path: Path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
                            topic_prefix="ids-", partitions=1, data_dir=tmp_path / "data")
        create_topics(settings)
        names = [settings.topic("interactions"), settings.topic("items")]
        reader = TopicIdReader(settings)
        try:
            first = reader(names)
            client = reader._admin
            assert set(first) == set(names) and client is not None
            assert reader(names) == first and reader._admin is client  # kept

            broker.stop()
            broker.start()  # same port, empty: every topic is new
            create_topics(settings)
            deadline, now_ids, failures = time.monotonic() + 60, {}, 0
            while time.monotonic() < deadline:
                try:
                    now_ids = reader(names)
                except Exception:  # the old connection's failure drops the client
                    failures += 1
                    assert reader._admin is None
                    continue
                if set(now_ids) == set(names) and now_ids != first:
                    break
                time.sleep(0.5)
            assert set(now_ids) == set(names)
            assert all(now_ids[n] != first[n] for n in names), (first, now_ids, failures)
        finally:
            reader.close()
        assert reader._admin is None


def test_announcer_sends_every_version_through_one_producer(settings: Settings) -> None:
    from kafka import KafkaConsumer

    from mekb.kafka_config import kafka_python_config

    create_topics(settings)
    announcer = Announcer(settings)
    versions = [ModelVersion(f"v{n}", Path("/nonexistent"),
                             {"kind": "full", "model_kind": "entitygraph", "created_at": n})
                for n in (1, 2, 3)]
    try:
        announcer(versions[0])
        producer = announcer._producer
        for mv in versions[1:]:
            announcer(mv)
            assert announcer._producer is producer  # one producer for every call
    finally:
        announcer.close()
    assert announcer._producer is None
    consumer = KafkaConsumer(settings.topic("model-updates"), **kafka_python_config(settings),
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    try:
        got = [json.loads(r.value) for r in consumer]
    finally:
        consumer.close()
    assert sorted((e["version"], e["model_kind"]) for e in got) == [  # (keyed: partitions)
        ("v1", "entitygraph"), ("v2", "entitygraph"), ("v3", "entitygraph")]
