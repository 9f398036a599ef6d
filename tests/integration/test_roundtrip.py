"""Both event types through the real broker with kafka-python and aiokafka."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaProducer

from mekb.events import encode, event_key, parse_interaction, parse_item
from mekb.kafka_config import aiokafka_config, kafka_python_config
from mekb.settings import Settings
from mekb.topics import create_topics
from tests.integration.helpers import consume_all

pytestmark = pytest.mark.integration

INTERACTION = parse_interaction({
    "event_id": "e1", "user_id": "u1", "item_id": "i1", "domain": "books",
    "action": "click", "ts": 1700000000, "weight": 2.5,
    "item": {"title": "Dune", "categories": ["Sci-Fi"]},
})
ITEM = parse_item({
    "item_id": "i1", "domain": "books", "title": "Dune", "text": "Frank Herbert's novel",
    "brand": "Ace", "categories": ["Sci-Fi"], "ts": 1700000000,
})


def test_kafka_python_round_trip(settings: Settings) -> None:
    create_topics(settings)
    producer = KafkaProducer(**kafka_python_config(settings), acks="all")
    for topic, event in (("interactions", INTERACTION), ("items", ITEM)):
        producer.send(settings.topic(topic), key=event_key(event), value=encode(event))
    producer.flush()
    producer.close()
    [inter] = consume_all(settings, settings.topic("interactions"), 1)
    [item] = consume_all(settings, settings.topic("items"), 1)
    assert inter.key == b"u1" and parse_interaction(inter.value) == INTERACTION
    assert item.key == b"i1" and parse_item(item.value) == ITEM


def test_aiokafka_round_trip(settings: Settings) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    create_topics(settings)

    async def scenario() -> list[bytes]:
        producer = AIOKafkaProducer(**aiokafka_config(settings))
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.topic("interactions"), encode(INTERACTION), key=b"u1"
            )
            await producer.send_and_wait(settings.topic("items"), encode(ITEM), key=b"i1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            settings.topic("interactions"), settings.topic("items"),
            **aiokafka_config(settings), auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while len(values) < 2:
                    batches = await consumer.getmany(timeout_ms=500)
                    values.extend(r.value for recs in batches.values() for r in recs)
        finally:
            await consumer.stop()
        return values

    values = asyncio.run(scenario())
    parsed = {type(e).__name__: e for e in (
        parse_interaction(v) if b"event_id" in v else parse_item(v) for v in values
    )}
    assert parsed == {"InteractionEvent": INTERACTION, "ItemEvent": ITEM}
