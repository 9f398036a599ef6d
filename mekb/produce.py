"""Push interaction and item events from JSONL/CSV files into Kafka.

Every line is validated against the event contracts before it is sent. A line
that fails is never dropped silently: it is counted by reason and written,
with its line number and the original text, to a rejects file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from mekb.events import (
    EventError,
    InteractionEvent,
    ItemEvent,
    encode,
    event_key,
    parse_interaction,
    parse_item,
)
from mekb.settings import Settings

logger = logging.getLogger(__name__)

EventKind = Literal["auto", "interaction", "item"]


@dataclass
class ProduceReport:
    sent: Counter[str] = field(default_factory=Counter)  # topic -> count
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    rejects_path: Path | None = None

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
        return line


@dataclass(frozen=True)
class Line:
    number: int
    text: str


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115


def _csv_row_to_event(row: dict[str, str]) -> dict[str, Any]:
    """CSV columns -> event dict: empty cells are absent, `categories` split on `|`,
    `item.<field>` columns build the inline item of an interaction."""
    out: dict[str, Any] = {}
    item: dict[str, Any] = {}
    for key, value in row.items():
        if key is None or value is None or value == "":
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


def read_lines(path: Path) -> Iterator[tuple[Line, dict[str, Any] | str]]:
    """Yield (line, parsed dict or raw text) for a JSONL or CSV file (optionally .gz)."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as fh:
        if name.endswith(".csv"):
            reader = csv.DictReader(fh)
            for number, row in enumerate(reader, start=2):
                text = json.dumps(row, ensure_ascii=False)
                yield Line(number, text), _csv_row_to_event(row)
        else:
            for number, text in enumerate(fh, start=1):
                text = text.rstrip("\n")
                if text.strip():
                    yield Line(number, text), text


def classify(raw: dict[str, Any] | str, kind: EventKind) -> InteractionEvent | ItemEvent:
    """Validate one record as the given kind (auto: interaction if it has event_id)."""
    if kind == "interaction":
        return parse_interaction(raw)
    if kind == "item":
        return parse_item(raw)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EventError("event", "bad_json", f"not JSON: {exc.msg}") from None
    if isinstance(raw, dict) and "event_id" in raw:
        return parse_interaction(raw)
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
) -> ProduceReport:
    """Validate and send every line of `path`; return what was sent and rejected."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    from mekb.kafka_config import kafka_python_config

    rejects_file = rejects_path or path.with_name(path.name + ".rejected")
    report = ProduceReport(rejects_path=rejects_file)
    producer = KafkaProducer(
        **kafka_python_config(settings), acks="all", linger_ms=5, retries=10,
        client_id="mekb-produce",
    )
    limiter = RateLimiter(rate)
    topics = {
        InteractionEvent: settings.topic("interactions"),
        ItemEvent: settings.topic("items"),
    }
    rejects: IO[str] | None = None
    try:
        lines: Iterable[tuple[Line, dict[str, Any] | str]] = read_lines(path)
        bar = tqdm(lines, desc=f"produce {path.name}", unit="ev", disable=not progress)
        for count, (line, raw) in enumerate(bar):
            if limit is not None and count >= limit:
                break
            try:
                event = classify(raw, kind)
            except EventError as err:
                report.rejected[err.reason] += 1
                if rejects is None:
                    rejects = open(rejects_file, "w", encoding="utf-8")  # noqa: SIM115
                rejects.write(json.dumps({
                    "line": line.number, "field": err.field, "reason": err.reason,
                    "message": err.message, "text": line.text,
                }, ensure_ascii=False) + "\n")
                continue
            limiter.wait()
            topic = topics[type(event)]
            producer.send(topic, key=event_key(event), value=encode(event))
            report.sent[topic] += 1
        producer.flush()
    finally:
        producer.close()
        if rejects is not None:
            rejects.close()
    return report
