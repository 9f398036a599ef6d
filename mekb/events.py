"""Versioned event contracts shared by the producer tool, the stream agents and serving.

Wire format: one UTF-8 JSON object per Kafka message (key = user_id for
interactions, item_id for items). Every string has a size limit and every
message a byte limit, so one bad producer cannot blow up state. A malformed
event raises `EventError`, which names the offending field and a short,
stable reason code used as the dead-letter reason and metric label.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024

ID_MAX = 128
ID_PATTERN = r"^[^\x00-\x1f]+$"  # no control characters
Id = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
Domain = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]
Action = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")]
Title = Annotated[str, Field(min_length=1, max_length=512)]
Text = Annotated[str, Field(max_length=8192)]
Brand = Annotated[str, Field(min_length=1, max_length=256)]
Category = Annotated[str, Field(min_length=1, max_length=256)]


class EventError(ValueError):
    """A malformed event: `field` names where, `reason` is a stable code."""

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason
        self.message = message


def _event_time(value: Any) -> float:
    """Event time as epoch seconds; accepts numbers and ISO-8601 strings."""
    if isinstance(value, bool):
        raise ValueError("must be epoch seconds or an ISO-8601 time")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise ValueError("must be epoch seconds or an ISO-8601 time") from exc
    else:
        raise ValueError("must be epoch seconds or an ISO-8601 time")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a finite, non-negative time")
    return seconds


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    v: Literal[1] = 1  # SCHEMA_VERSION
    ts: float

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> float:
        return _event_time(value)


class ItemFields(BaseModel):
    """Item attributes that may ride inline on an interaction."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    title: Title
    text: Text | None = None
    brand: Brand | None = None
    categories: Annotated[list[Category], Field(max_length=32)] = []


class ItemEvent(_Event):
    """An item was created or updated (topic `items`, key item_id)."""

    item_id: Id
    domain: Domain
    title: Title
    text: Text | None = None
    brand: Brand | None = None
    categories: Annotated[list[Category], Field(max_length=32)] = []


class InteractionEvent(_Event):
    """A user interacted with an item (topic `interactions`, key user_id)."""

    event_id: Id
    user_id: Id
    item_id: Id
    domain: Domain
    action: Action
    weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0
    rating: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] | None = None
    item: ItemFields | None = None

    def inline_item(self) -> ItemEvent | None:
        """The inline item fields as an ItemEvent (same id, domain and time)."""
        if self.item is None:
            return None
        return ItemEvent(
            item_id=self.item_id, domain=self.domain, ts=self.ts, **self.item.model_dump()
        )


class UserDeleteEvent(_Event):
    """Erase a user (topic `interactions`, key user_id): the stream worker removes the
    user's state. On the interactions topic, not a topic of its own, so that it is
    ordered with the user's interactions: what was produced before it is erased, what
    comes after it starts a new MeKB (docs/contracts.md)."""

    type: Literal["delete_user"]
    user_id: Id


E = TypeVar("E", bound=_Event)


def _first_error(exc: ValidationError) -> EventError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "event"
    kind = err["type"]
    reason = {
        "missing": "missing_field",
        "extra_forbidden": "unknown_field",
        "string_too_long": "too_long",
        "too_long": "too_long",
        "string_too_short": "empty",
        "literal_error": "bad_version" if field == "v" else "bad_value",
    }.get(kind, "bad_value")
    return EventError(field, reason, err["msg"])


def parse_event(model: type[E], raw: bytes | str | dict[str, Any]) -> E:
    """Validate one event; raise EventError naming the first bad field."""
    try:
        return model.model_validate(_json_object(raw))
    except ValidationError as exc:
        raise _first_error(exc) from None


def _json_object(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_EVENT_BYTES:
            raise EventError("event", "oversized", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError("event", "bad_encoding", f"not UTF-8: {exc}") from None
    if isinstance(raw, str):
        if len(raw) > MAX_EVENT_BYTES:
            raise EventError("event", "oversized", f"{len(raw)} chars > {MAX_EVENT_BYTES}")
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EventError("event", "bad_json", f"not JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(raw, dict):
        raise EventError("event", "not_object", "must be a JSON object")
    return raw


def parse_interaction(raw: bytes | str | dict[str, Any]) -> InteractionEvent:
    return parse_event(InteractionEvent, raw)


def parse_interactions_record(
    raw: bytes | str | dict[str, Any],
) -> InteractionEvent | UserDeleteEvent:
    """A record of the interactions topic: an interaction, or with a `type` field a
    user deletion (an interaction has no `type`)."""
    obj = _json_object(raw)
    model: type[InteractionEvent] | type[UserDeleteEvent] = (
        UserDeleteEvent if "type" in obj else InteractionEvent)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _first_error(exc) from None


def parse_item(raw: bytes | str | dict[str, Any]) -> ItemEvent:
    return parse_event(ItemEvent, raw)


def encode(event: BaseModel) -> bytes:
    """Compact JSON bytes, None fields left out."""
    return event.model_dump_json(exclude_none=True).encode("utf-8")


def event_key(event: ItemEvent | InteractionEvent | UserDeleteEvent) -> bytes:
    """Partition key: user for interactions and deletions (per-user state), item for items."""
    if isinstance(event, (InteractionEvent, UserDeleteEvent)):
        return event.user_id.encode("utf-8")
    return event.item_id.encode("utf-8")
