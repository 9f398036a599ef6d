"""Push interaction and item events from JSONL/CSV files into Kafka.

Every line is validated against the event contracts before it is sent. A line
that fails is never dropped silently: it is counted by reason and written,
with its line number and the original text, to a rejects file. Nothing is
changed on the way: a line that is not valid UTF-8 is rejected (`bad_encoding`,
as the stream worker dead-letters the same bytes) instead of being repaired, and a
CSV column that is no event field stops the run before anything is sent, unless
the caller chose to drop such columns (`ignore_extra_columns`).
"""

from __future__ import annotations

import base64
import bz2
import csv
import gzip
import itertools
import json
import logging
import lzma
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from mekb.events import (
    EventError,
    InteractionEvent,
    ItemEvent,
    ItemFields,
    UserDeleteEvent,
    encode,
    event_key,
    parse_interactions_record,
    parse_item,
)
from mekb.settings import Settings

logger = logging.getLogger(__name__)

EventKind = Literal["auto", "interaction", "item"]
# Every column a CSV file may have: the fields of every event kind (interaction, item,
# user deletion), `item.<field>` for the inline item of an interaction.
CSV_COLUMNS = (frozenset(InteractionEvent.model_fields) | frozenset(ItemEvent.model_fields)
               | frozenset(UserDeleteEvent.model_fields)) | {
    f"item.{name}" for name in ItemFields.model_fields}
# The Kafka client's bootstrap wait: a host that accepts TCP but does not answer the
# Kafka protocol fails in this long instead of the client's default 30 s.
BOOTSTRAP_TIMEOUT_MS = 10_000


class ProduceError(Exception):
    """The file or the broker is unusable as a whole: nothing more is sent."""


@dataclass
class ProduceReport:
    sent: Counter[str] = field(default_factory=Counter)  # topic -> count
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    rejects_path: Path | None = None
    failed: list[str] = field(default_factory=list)  # why sends the broker refused failed
    stopped: bool = False  # the caller's stop ended the run before the end of the file

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        sent = ", ".join(f"{n} to {t}" for t, n in sorted(self.sent.items())) or "0"
        line = f"sent {self.total_sent} events ({sent}); rejected {self.total_rejected} lines"
        if self.rejected:
            reasons = ", ".join(f"{r}={n}" for r, n in self.rejected.most_common())
            line += f" ({reasons}) -> {self.rejects_path}"
        if self.stopped:
            line += "; stopped before the end of the file"
        return line


class Deliveries:
    """Where each line of a produced file landed, for a caller that must know which
    lines a consumer has applied (`mekb up` marks replayed ratings only then).

    Line numbers are the file's; a line the producer reached that was never sent (a
    reject, a blank line) needs no delivery. Acknowledgements arrive on the producer's
    network thread: single dict stores, safe under the GIL."""

    def __init__(self) -> None:
        self.reached = 0  # the last line number read (sent, rejected or skipped)
        # line number -> (topic, partition, offset) once acknowledged, None until then
        self.placed: dict[int, tuple[str, int, int] | None] = {}

    def sending(self, number: int) -> None:
        self.placed[number] = None

    def landed(self, number: int, metadata: Any) -> None:
        self.placed[number] = (metadata.topic, metadata.partition, metadata.offset)

    def ends(self, topic: str) -> dict[int, int]:
        """Per partition of `topic`, the offset after the last acknowledged line."""
        out: dict[int, int] = {}
        for place in self.placed.values():
            if place is not None and place[0] == topic:
                out[place[1]] = max(out.get(place[1], 0), place[2] + 1)
        return out

    def applied_prefix(self, topic: str, applied: dict[int, int]) -> int:
        """How many lines from the start of the file need nothing more: each was not
        sent, or sent to `topic` below the partition's applied offset (`applied`: next
        offset per partition). Stops at the first line unacknowledged or not applied."""
        for number in range(1, self.reached + 1):
            if number not in self.placed:
                continue
            place = self.placed[number]
            if place is None or place[0] != topic or place[2] >= applied.get(place[1], 0):
                return number - 1
        return self.reached


@dataclass(frozen=True)
class Line:
    number: int
    text: str
    # Why the line was rejected before it could be parsed (bad UTF-8, extra CSV cells)
    error: EventError | None = None
    raw: bytes | None = None  # the original bytes of a line that is not UTF-8


# Compressed inputs, by suffix: a file is read through the matching decompressor.
COMPRESSIONS: dict[str, Callable[..., Any]] = {
    ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open_binary(path: Path) -> IO[bytes]:
    opener = COMPRESSIONS.get(path.suffix)
    if opener is not None:
        return opener(path, "rb")
    return open(path, "rb")  # noqa: SIM115


def base_name(path: Path) -> str:
    """The file name without its compression suffix (`a.csv.xz` -> `a.csv`)."""
    return path.name.removesuffix(path.suffix) if path.suffix in COMPRESSIONS else path.name


def _decode(number: int, data: bytes) -> tuple[str, EventError | None]:
    """The text of one line and, when it is not UTF-8, the reason (the text then shows
    the bad bytes as \\xNN escapes, for the rejects file)."""
    if number == 1:
        data = data.removeprefix(b"\xef\xbb\xbf")  # a BOM, as spreadsheet exports write
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        err = EventError("event", "bad_encoding",
                         f"not UTF-8: byte {exc.start + 1} ({exc.reason})")
        return data.decode("utf-8", errors="backslashreplace"), err


def _csv_row_to_event(row: dict[str, str]) -> dict[str, Any]:
    """CSV columns -> event dict: empty cells are absent, `categories` split on `|`,
    `item.<field>` columns build the inline item of an interaction."""
    out: dict[str, Any] = {}
    item: dict[str, Any] = {}
    for key, value in row.items():
        if value == "":
            continue
        target, name = (item, key[5:]) if key.startswith("item.") else (out, key)
        if name == "categories":
            target[name] = [c for c in value.split("|") if c]
        elif name in ("ts", "weight", "v"):
            try:
                target[name] = float(value) if name != "v" else int(value)
            except ValueError:
                target[name] = value  # keep it: validation names the field
        else:
            target[name] = value
    if item:
        out["item"] = item
    return out


def read_lines(
    path: Path, *, ignore_extra_columns: bool = False
) -> Generator[tuple[Line, dict[str, Any] | str], None, None]:
    """Yield (line, parsed dict or raw text) for a JSONL or CSV file (optionally .gz,
    .bz2 or .xz).
    A line with `error` set is to be rejected as it is. Raises ProduceError for a CSV
    header with unknown or repeated columns (unless ignore_extra_columns: then unknown
    columns, and cells beyond the header, are dropped)."""
    with _open_binary(path) as fh:
        if base_name(path).endswith(".csv"):
            yield from _read_csv(path, fh, ignore_extra_columns)
            return
        for number, data in enumerate(fh, start=1):
            data = data.rstrip(b"\r\n")
            text, err = _decode(number, data)
            if text.strip():
                yield Line(number, text, err, data if err else None), text


def _read_csv(path: Path, fh: IO[bytes], ignore_extra: bool
              ) -> Iterator[tuple[Line, dict[str, Any] | str]]:
    bad: dict[int, tuple[bytes, EventError]] = {}  # physical line -> (bytes, reason)

    def decoded() -> Iterator[str]:
        for number, data in enumerate(fh, start=1):
            text, err = _decode(number, data)
            if err is not None:
                bad[number] = (data.rstrip(b"\r\n"), err)
            yield text

    reader = csv.reader(decoded())
    header = next(reader, None)
    if header is None:
        return
    if 1 in bad:
        raise ProduceError(f"{path}: the header line is not UTF-8")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ProduceError(f"{path}: repeated column(s) {', '.join(map(repr, repeated))}")
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown and not ignore_extra:
        raise ProduceError(
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))}: not fields of an "
            "interaction or item event (README: Event formats); nothing was sent. "
            "Pass --ignore-extra-columns to drop them")
    keep = [i for i, c in enumerate(header) if c in CSV_COLUMNS]
    last = 1
    for cells in reader:
        first, last = last + 1, reader.line_num  # a quoted cell may span lines
        if not cells:
            continue  # a blank line
        row = dict(zip(header, cells, strict=False))
        text = json.dumps(row, ensure_ascii=False)
        hit = next((n for n in range(first, last + 1) if n in bad), None)
        if hit is not None:
            data, err = bad[hit]
            yield Line(first, text, err, data), row
        elif len(cells) > len(header) and not ignore_extra:
            text = json.dumps(cells, ensure_ascii=False)
            yield Line(first, text, EventError(
                "event", "extra_columns",
                f"{len(cells)} cells, the header has {len(header)} columns")), row
        else:
            yield Line(first, text), _csv_row_to_event(
                {header[i]: cells[i] for i in keep if i < len(cells)})


def classify(raw: dict[str, Any] | str, kind: EventKind
             ) -> InteractionEvent | ItemEvent | UserDeleteEvent:
    """Validate one record as the given kind. Interactions-topic records are
    interactions or, with a `type` field, user deletions (docs/contracts.md); auto: a
    record with `event_id` or `type` belongs to the interactions topic, others are items."""
    if kind == "interaction":
        return parse_interactions_record(raw)
    if kind == "item":
        return parse_item(raw)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EventError("event", "bad_json", f"not JSON: {exc.msg}") from None
    if isinstance(raw, dict) and ("event_id" in raw or "type" in raw):
        return parse_interactions_record(raw)
    return parse_item(raw)


class RateLimiter:
    """Paces calls to at most `rate` per second (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + self.interval


def produce_file(
    settings: Settings,
    path: Path,
    *,
    kind: EventKind = "auto",
    rate: float = 0.0,
    rejects_path: Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    ignore_extra_columns: bool = False,
    deliveries: Deliveries | None = None,
    stop: threading.Event | None = None,
) -> ProduceReport:
    """Validate and send every line of `path`; return what was sent and rejected.
    Raises ProduceError when the broker refused any send (after flushing the rest), so
    a lost event is never reported as sent. `deliveries`, when given, records where
    every line landed; `stop`, when set, ends the run after the line being sent (what
    was handed to the producer is still flushed)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from tqdm import tqdm

    from mekb.kafka_config import bootstrap_servers, kafka_python_config

    rejects_file = rejects_path or path.with_name(path.name + ".rejected")
    report = ProduceReport(rejects_path=rejects_file)
    lines = read_lines(path, ignore_extra_columns=ignore_extra_columns)
    first = next(lines, None)  # a bad CSV header fails here, before any connection
    try:
        producer = KafkaProducer(
            **kafka_python_config(settings), acks="all", linger_ms=5, retries=10,
            client_id="mekb-produce", bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        )
    except KafkaError as exc:
        lines.close()
        raise ProduceError(f"broker at {bootstrap_servers(settings)} unreachable: "
                           f"{type(exc).__name__}: {exc}") from None
    limiter = RateLimiter(rate)
    topics = {
        InteractionEvent: settings.topic("interactions"),
        UserDeleteEvent: settings.topic("interactions"),
        ItemEvent: settings.topic("items"),
    }
    rejects: IO[str] | None = None
    try:
        every: Iterable[tuple[Line, dict[str, Any] | str]] = (
            itertools.chain([first], lines) if first is not None else ())
        bar = tqdm(every, desc=f"produce {path.name}", unit="ev", disable=not progress)
        for count, (line, raw) in enumerate(bar):
            if (limit is not None and count >= limit) or (stop is not None and stop.is_set()):
                report.stopped = stop is not None and stop.is_set()
                break
            if deliveries is not None:
                deliveries.reached = line.number
            try:
                if line.error is not None:
                    raise line.error
                event = classify(raw, kind)
            except EventError as err:
                report.rejected[err.reason] += 1
                if rejects is None:
                    rejects = open(rejects_file, "w", encoding="utf-8")  # noqa: SIM115
                entry = {"line": line.number, "field": err.field, "reason": err.reason,
                         "message": err.message, "text": line.text}
                if line.raw is not None:  # the exact bytes, which `text` only shows
                    entry["raw_base64"] = base64.b64encode(line.raw).decode("ascii")
                rejects.write(json.dumps(entry, ensure_ascii=False) + "\n")
                continue
            limiter.wait()
            topic = topics[type(event)]
            if deliveries is not None:  # before the send: its acknowledgement may come first
                deliveries.sending(line.number)
            future = producer.send(topic, key=event_key(event), value=encode(event))
            future.add_errback(_failed, report.failed)
            if deliveries is not None:
                future.add_callback(deliveries.landed, line.number)
            report.sent[topic] += 1
        producer.flush()
    except KafkaError as exc:  # the broker went away during the run
        raise ProduceError(
            f"broker at {bootstrap_servers(settings)}: {type(exc).__name__}: {exc} (after "
            f"{report.total_sent} of the file's events were handed to the producer)") from None
    finally:
        lines.close()
        producer.close(timeout=BOOTSTRAP_TIMEOUT_MS / 1000)
        if rejects is not None:
            rejects.close()
    if report.failed:
        reasons = Counter(report.failed).most_common(3)
        raise ProduceError(
            f"broker at {bootstrap_servers(settings)} refused {len(report.failed)} of the "
            f"{report.total_sent} events sent ({'; '.join(f'{r} x{n}' for r, n in reasons)})")
    return report


def _failed(failures: list[str], exc: BaseException) -> None:
    failures.append(f"{type(exc).__name__}: {exc}")
