"""Dead letters you can act on: read the `dead-letters` topic, filter it, replay records
into the topic they came from.

A dead letter (docs/contracts.md) names its source topic, reason, field and error and
carries the original record value in base64; its id here is `<partition>:<offset>` in
`dead-letters`. Replay sends either a corrected payload (a file of `{"id", "event"}`
lines) or the original bytes of every dead letter that matches the filters. Whatever is
sent is first validated with the event contract (`mekb.produce.classify`, as `mekb
produce` does) and keyed by its trimmed id (`mekb.events.event_key`), so a replay never
produces a record the worker would dead-letter again for the same reason — a
`key_mismatch` is fixed by the replay itself.

Idempotence: every replayed id is appended, after the broker acknowledged the record,
to a ledger (`$MEKB_DATA_DIR/dlq/replayed.jsonl`, per dead-letters topic id: a re-created
topic's offsets start again), and a later replay skips ids found there. A crash between
the acknowledgement and the ledger line re-sends on the next replay; the worker then
drops the copy by its `event_id` (within `MEKB_DEDUPE_WINDOW` applied events of the user),
and items are idempotent anyway (the item table keeps the latest).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from mekb.events import EventError, InteractionEvent, ItemEvent, UserDeleteEvent, encode, event_key
from mekb.produce import BOOTSTRAP_TIMEOUT_MS, EventKind, classify
from mekb.settings import Settings

logger = logging.getLogger(__name__)

# Where each source's records go back to, and the event kind they must validate as.
SOURCES: dict[str, EventKind] = {"interactions": "interaction", "items": "item"}
IDLE_MS = 500  # a read of the topic ends after one empty poll this long past its end
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class DlqError(Exception):
    """A request about dead letters that cannot be met (printed as one line)."""


@dataclass(frozen=True)
class DeadLetter:
    partition: int  # in dead-letters
    offset: int
    timestamp: float  # when it was dead-lettered (record time, unix seconds)
    key: bytes | None
    reason: str
    field: str
    error: str
    source: str  # logical topic: interactions | items
    source_partition: int
    source_offset: int
    original: bytes

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def text(self) -> str:
        """The original value for a terminal: bad UTF-8 bytes as \\xNN escapes."""
        return self.original.decode("utf-8", errors="backslashreplace")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "time": self.timestamp, "reason": self.reason, "field": self.field,
            "error": self.error, "source": self.source, "source_partition":
            self.source_partition, "source_offset": self.source_offset,
            "key": None if self.key is None else self.key.decode("utf-8", "backslashreplace"),
            "original": self.text,
            "original_base64": base64.b64encode(self.original).decode("ascii"),
        }

    @classmethod
    def from_record(cls, rec: Any) -> DeadLetter:
        body = json.loads(rec.value)
        return cls(
            partition=rec.partition, offset=rec.offset, timestamp=rec.timestamp / 1000.0,
            key=rec.key, reason=str(body.get("reason", "")), field=str(body.get("field", "")),
            error=str(body.get("error", "")), source=str(body.get("source", "")),
            source_partition=int(body.get("partition", -1)),
            source_offset=int(body.get("offset", -1)),
            original=base64.b64decode(body.get("original", "")),
        )


@dataclass(frozen=True)
class Filter:
    reasons: frozenset[str] = frozenset()  # empty: every reason
    sources: frozenset[str] = frozenset()
    since: float | None = None
    until: float | None = None
    ids: frozenset[str] = frozenset()

    def __call__(self, d: DeadLetter) -> bool:
        return ((not self.reasons or d.reason in self.reasons)
                and (not self.sources or d.source in self.sources)
                and (self.since is None or d.timestamp >= self.since)
                and (self.until is None or d.timestamp < self.until)
                and (not self.ids or d.id in self.ids))


def parse_time(value: str, now: float | None = None) -> float:
    """Unix seconds from epoch seconds, an ISO-8601 time, or an age (`30m`, `2h`, `7d`)."""
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DlqError(f"time {value!r}: use epoch seconds, an ISO-8601 time or an age "
                       "such as 30m, 2h, 7d") from None
    return moment.timestamp()


def parse_id(value: str) -> tuple[int, int]:
    partition, sep, offset = value.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise DlqError(f"dead letter id {value!r}: expected PARTITION:OFFSET, e.g. 0:12")
    return int(partition), int(offset)


def _consumer(settings: Settings) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **_kafka_config(settings), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
        request_timeout_ms=BOOTSTRAP_TIMEOUT_MS + 5000, client_id="mekb-dlq",
    )


def _kafka_config(settings: Settings) -> dict[str, Any]:
    from mekb.kafka_config import kafka_python_config

    return kafka_python_config(settings)


def read(settings: Settings, keep: Filter = Filter()) -> Iterator[DeadLetter]:
    """Every dead letter that passes `keep`, partition by partition in offset order.
    Reads to the end seen now: the end offsets, then one empty poll (the embedded broker
    reports a low end for multi-record batches, docs/architecture.md)."""
    from kafka import TopicPartition

    topic = settings.topic("dead-letters")
    consumer = _consumer(settings)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise DlqError(f"no topic {topic} (run `mekb topics create`)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        wanted = {parse_id(i) for i in keep.ids}
        if wanted:  # only the partitions of the ids asked for
            tps = [tp for tp in tps if any(p == tp.partition for p, _ in wanted)]
            if not tps:
                return
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        if wanted:  # start at the lowest id asked for in each partition
            for tp in tps:
                consumer.seek(tp, min(o for p, o in wanted if p == tp.partition))
        else:
            consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        last = False
        while not last:
            last = not pending  # past the ends: one more poll for what they hid
            got = consumer.poll(timeout_ms=IDLE_MS, max_records=5000)
            for recs in got.values():
                for rec in recs:
                    letter = _letter(rec)
                    if letter is not None and keep(letter):
                        yield letter
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
    finally:
        close_quietly(consumer)


def close_quietly(client: Any) -> None:
    """Close a kafka-python client without its "Metadata refresh: failed Cancelled"
    ERROR line: closing cancels a pending background refresh, which is no failure of
    the command's (it would be the last line a user reads)."""
    log = logging.getLogger("kafka.cluster")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        log.setLevel(level)


def _letter(rec: Any) -> DeadLetter | None:
    if rec.value is None or not rec.value.startswith(b"{"):
        return None  # a marker or a tombstone, not a dead letter
    try:
        return DeadLetter.from_record(rec)
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("dead letter %d:%d unreadable (%s): skipped", rec.partition, rec.offset,
                       exc)
        return None


def get(settings: Settings, dlq_id: str) -> DeadLetter:
    found = next(read(settings, Filter(ids=frozenset({dlq_id}))), None)
    if found is None:
        raise DlqError(f"no dead letter {dlq_id} in {settings.topic('dead-letters')}")
    return found


# --- replay -----------------------------------------------------------------------------
@dataclass
class ReplayReport:
    sent: Counter[str] = field(default_factory=Counter)  # topic -> records
    skipped: Counter[str] = field(default_factory=Counter)  # why -> records
    problems: list[str] = field(default_factory=list)  # one line per record not sent

    def summary(self, dry_run: bool = False) -> str:
        total = sum(self.sent.values())
        where = ", ".join(f"{n} to {t}" for t, n in sorted(self.sent.items()))
        line = f"{'would replay' if dry_run else 'replayed'} {total}" + (
            f" ({where})" if where else "")
        if self.skipped:
            line += "; skipped " + ", ".join(f"{why}={n}" for why, n in
                                             self.skipped.most_common())
        return line


@dataclass(frozen=True)
class Correction:
    dlq_id: str
    event: dict[str, Any] | str
    line: int


def read_corrections(path: Path) -> dict[str, Correction]:
    """`{"id": "P:O", "event": {...} | "<json text>"}` per line (blank lines allowed)."""
    out: dict[str, Correction] = {}
    with open(path, encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DlqError(f"{path} line {number}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "id" not in obj or "event" not in obj:
                raise DlqError(f"{path} line {number}: expected an object with `id` "
                               "(the dead letter's PARTITION:OFFSET) and `event`")
            if not isinstance(obj["event"], (dict, str)):
                raise DlqError(f"{path} line {number}: `event` must be an object or a string")
            parse_id(str(obj["id"]))
            dlq_id = str(obj["id"]).strip()
            if dlq_id in out:
                raise DlqError(f"{path} line {number}: dead letter {dlq_id} corrected twice "
                               f"(also line {out[dlq_id].line})")
            out[dlq_id] = Correction(dlq_id, obj["event"], number)
    if not out:
        raise DlqError(f"{path}: no corrections")
    return out


class Ledger:
    """Ids already replayed from one incarnation of the dead-letters topic."""

    def __init__(self, path: Path, topic: str, topic_id: str | None) -> None:
        self.path = path
        self.scope = f"{topic}@{topic_id or '-'}"
        self.done: set[str] = set()
        if path.exists():
            for text in path.read_text(encoding="utf-8").splitlines():
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if obj.get("scope") == self.scope:
                    self.done.add(str(obj["id"]))

    def record(self, entries: Iterable[tuple[str, str]]) -> None:
        lines = [json.dumps({"scope": self.scope, "id": i, "to": topic, "at": time.time()})
                 for i, topic in entries]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


def _validated(letter: DeadLetter, raw: dict[str, Any] | str | bytes
               ) -> InteractionEvent | ItemEvent | UserDeleteEvent:
    kind = SOURCES.get(letter.source)
    if kind is None:
        raise DlqError(f"unknown source topic {letter.source!r}")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")  # bad UTF-8 raises UnicodeDecodeError: caught by caller
    return classify(raw, kind)


def replay(
    settings: Settings, keep: Filter, *, corrections: dict[str, Correction] | None = None,
    dry_run: bool = False, force: bool = False, out: IO[str] | None = None,
) -> ReplayReport:
    """Send corrected payloads (`corrections`, by dead letter id) or, without them, the
    original bytes of every dead letter that passes `keep`, to the letter's source topic.
    Records that do not validate are not sent (counted `invalid`), nor ids in the ledger
    (unless `force`)."""
    from mekb.topics import topic_ids

    topic = settings.topic("dead-letters")
    ledger = Ledger(settings.data_dir / "dlq" / "replayed.jsonl", topic,
                    topic_ids(settings, [topic]).get(topic))
    if corrections is not None:
        keep = Filter(keep.reasons, keep.sources, keep.since, keep.until,
                      frozenset(corrections))
    report = ReplayReport()
    batch: list[tuple[DeadLetter, InteractionEvent | ItemEvent | UserDeleteEvent]] = []
    seen: set[str] = set()
    for letter in read(settings, keep):
        seen.add(letter.id)
        if letter.id in ledger.done and not force:
            report.skipped["already_replayed"] += 1
            continue
        raw: dict[str, Any] | str | bytes = (corrections[letter.id].event if corrections
                                            else letter.original)
        try:
            event = _validated(letter, raw)
        except (EventError, UnicodeDecodeError) as exc:
            reason = exc.reason if isinstance(exc, EventError) else "bad_encoding"
            report.skipped[f"invalid:{reason}"] += 1
            report.problems.append(f"{letter.id} ({letter.reason}): still invalid: {exc}")
            continue
        except DlqError as exc:
            report.skipped["unknown_source"] += 1
            report.problems.append(f"{letter.id}: {exc}")
            continue
        batch.append((letter, event))
    for dlq_id in sorted(set(corrections or ()) - seen):
        report.skipped["not_found"] += 1
        report.problems.append(f"{dlq_id}: no such dead letter (or filtered out)")
    if out is not None and dry_run:
        for letter, event in batch:
            out.write(f"{letter.id} -> {settings.topic(letter.source)}: "
                      f"{encode(event).decode()}\n")
    if dry_run:
        for letter, _ in batch:
            report.sent[settings.topic(letter.source)] += 1
        return report
    _send(settings, batch, report, ledger)
    return report


def _send(settings: Settings,
          batch: list[tuple[DeadLetter, InteractionEvent | ItemEvent | UserDeleteEvent]],
          report: ReplayReport, ledger: Ledger) -> None:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    if not batch:
        return
    producer = KafkaProducer(**_kafka_config(settings), acks="all", linger_ms=5, retries=10,
                             client_id="mekb-dlq", bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    try:
        futures = []
        for letter, event in batch:
            dest = settings.topic(letter.source)
            futures.append((letter.id, dest, producer.send(
                dest, key=event_key(event), value=encode(event))))
        producer.flush()
        acked = []
        for dlq_id, dest, future in futures:
            try:
                future.get(timeout=30)
            except KafkaError as exc:
                report.skipped["send_failed"] += 1
                report.problems.append(f"{dlq_id}: not sent: {type(exc).__name__}: {exc}")
                continue
            acked.append((dlq_id, dest))
            report.sent[dest] += 1
        ledger.record(acked)
    finally:
        producer.close(timeout=10)
