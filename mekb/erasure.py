"""Publishing user deletions: `delete_user` records on the interactions topic.

Used by `mekb users delete` and serving's `DELETE /v1/users/{user_id}`. The record is
keyed by the user id like the user's interactions, so it lands in their partition and
the stream worker applies it in order with them (docs/contracts.md "User deletion").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mekb.events import UserDeleteEvent, encode, event_key
from mekb.settings import Settings


@dataclass(frozen=True)
class Published:
    user_id: str
    partition: int
    offset: int


def delete_event(user_id: str, ts: float | None = None) -> UserDeleteEvent:
    """The deletion of `user_id` (EventError-free: raises pydantic's ValidationError for
    an id the contract refuses, e.g. empty or with control characters)."""
    return UserDeleteEvent(type="delete_user", user_id=user_id,
                           ts=time.time() if ts is None else ts)


class UserDeleter:
    """Sends deletions with acks=all through one aiokafka producer, started on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic("interactions")
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def delete(self, user_ids: Sequence[str]) -> list[Published]:
        """Publish one deletion per user (validated first: nothing is sent if one is
        invalid); returns where each landed once the broker acknowledged it."""
        events = [delete_event(u) for u in user_ids]
        producer = await self._started()
        futures = [await producer.send(self.topic, encode(ev), key=event_key(ev))
                   for ev in events]
        metas = await asyncio.gather(*futures)
        return [Published(ev.user_id, int(m.partition), int(m.offset))
                for ev, m in zip(events, metas, strict=True)]

    async def _started(self) -> Any:
        async with self._lock:
            if self._producer is None:
                from aiokafka import AIOKafkaProducer

                from streams.kafka_io import producer_kwargs

                producer = AIOKafkaProducer(**producer_kwargs(self.settings))
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # (started connections are closed again)
                    raise
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
