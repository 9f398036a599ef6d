"""Backfill: load a historic event log into the topics in event-time order, as fast as the
stream worker applies it.

Input: JSONL or CSV files (plain, .gz, .bz2 or .xz), one file or a directory of them, in
the formats of `mekb produce` (README "Event formats"). Every line is read and validated
by `mekb.produce` (`read_lines`, `classify`), so a line `produce` rejects is rejected here
the same way (rejects file, counted by reason) and never sent.

Order. The stream worker builds every MeKB in the order its partition delivers events, and
a training example is the MeKB *before* its event: sending a year of history in event-time
order makes both what they would have been had the events been streamed live. Each file is
a sorted run, checked in a first pass that reads only each line's event time (it also
counts the events for the ETA); the runs are merged k-way (`heapq.merge`, one line per file
in memory), and each line is validated as it is sent (a rejected line goes to the rejects
file then). A file that is not in event-time order is refused before anything is sent,
naming the first line out of order, unless `sort` is set: then it is cut into runs of
`run_size` events, each sorted in memory and spilled to a temporary directory, and those
runs join the merge (memory bounded by `run_size` events, disk by the file's size). Equal
times keep file and line order.

Items go first — every item of the log, then every interaction — so each interaction finds
its item linked (an interaction whose item is unknown is parked and gets no training
example; README "Stream worker"). A catalogue that changes during the history is thus
applied as of its last version, as if it had been loaded before the first event.

Sending: record batches per partition (aiokafka, as the worker writes its outputs), the
partition chosen by the murmur2 hash of the key, as `mekb produce` and every Kafka client's
default partitioner do, so a user's backfilled and live events share a partition. Flow
control: the producer keeps at most `max_lag` records ahead of what the worker's consumer
group has committed (committed offsets against the offsets of the batches this run
produced; the embedded broker's end offsets are unreliable, mekb/kafka_config.py), so a
backfill neither floods the broker nor starves live traffic; the run ends when the worker
has committed everything it sent. No progress for `stall_timeout_s` is an error.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import itertools
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson

from mekb.events import EventError, ItemEvent, encode, event_key
from mekb.events import _event_time as event_time  # the contract's own reading of `ts`
from mekb.produce import (
    BOOTSTRAP_TIMEOUT_MS,
    COMPRESSIONS,
    EventKind,
    ProduceError,
    base_name,
    classify,
    read_lines,
)
from mekb.settings import Settings

logger = logging.getLogger(__name__)

FORMATS = (".jsonl", ".ndjson", ".json", ".csv")
# The worker's item table is a replica of item-entities, read every 200 ms: after the
# item agent committed the last item, give the replica this long before interactions
# follow (an interaction that still beats its item is parked and applied, without its
# training example).
ITEM_SETTLE_S = 2.0
POLL_S = 0.25

# One event in the merge: (event time, file index, line, is item, key, value). Tuples
# sort by time, then file, then line: a stable k-way merge.
Rec = tuple[float, int, int, bool, bytes, bytes]


class BackfillError(Exception):
    """The log or the broker is unusable as a whole, or the worker stopped consuming."""


@dataclass
class FileScan:
    path: Path
    lines: int = 0  # every non-blank line (each is sent or rejected)
    items: int = 0  # lines that look like items / interactions (validated when sent)
    interactions: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    # (line, its time, the previous line, that line's time) where the order first breaks
    unsorted: tuple[int, float, int, float] | None = None


@dataclass
class BackfillReport:
    files: list[FileScan] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # topic -> records
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> lines
    rejects_path: Path | None = None
    seconds: float = 0.0
    waited: bool = True  # the run waited for the worker to apply everything

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    def summary(self) -> str:
        first = min((f.first_ts for f in self.files if f.first_ts is not None), default=None)
        last = max((f.last_ts for f in self.files if f.last_ts is not None), default=None)
        span = f" (event time {_iso(first)} .. {_iso(last)})" if first is not None else ""
        sent = ", ".join(f"{n} to {t}" for t, n in sorted(self.sent.items())) or "0"
        rate = self.total_sent / self.seconds if self.seconds > 0 else 0.0
        line = (f"backfill of {len(self.files)} file(s): sent {self.total_sent} events "
                f"({sent}){span} in {self.seconds:.1f}s ({rate:,.0f} events/s)")
        line += "; the worker applied all of it" if self.waited else " (not waited for)"
        total = sum(self.rejected.values())
        if total:
            reasons = ", ".join(f"{r}={n}" for r, n in self.rejected.most_common())
            line += f"; rejected {total} lines ({reasons}) -> {self.rejects_path}"
        return line


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def discover(path: Path) -> list[Path]:
    """The event files of `path`: itself, or every JSONL/CSV file below a directory
    (sorted by path; hidden files and *.rejected skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise BackfillError(f"no such file or directory: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and base_name(p).endswith(FORMATS))
    if not files:
        raise BackfillError(f"{path}: no event files (*.jsonl, *.ndjson, *.json, *.csv, "
                            f"optionally {', '.join(COMPRESSIONS)})")
    return files


def events(path: Path, index: int, kind: EventKind, ignore_extra: bool,
           reject: Callable[[Path, Any, EventError], None] | None = None) -> Iterator[Rec]:
    """The valid events of one file in file order; invalid lines go to `reject`."""
    for line, raw in read_lines(path, ignore_extra_columns=ignore_extra):
        try:
            if line.error is not None:
                raise line.error
            event = classify(raw, kind)
        except EventError as err:
            if reject is not None:
                reject(path, line, err)
            continue
        yield (event.ts, index, line.number, isinstance(event, ItemEvent), event_key(event),
               encode(event))


class Rejects:
    """The rejects file of a run (created on the first reject), `mekb produce`'s format
    plus the file each line came from. A line is written once, however often its file is
    read (once per phase); `on_reject` is told of each."""

    def __init__(self, path: Path, counts: Counter[str]) -> None:
        self.path = path
        self.counts = counts
        self.on_reject: Callable[[], None] | None = None
        self._seen: set[tuple[Path, int]] = set()
        self._fh: IO[str] | None = None

    def __call__(self, source: Path, line: Any, err: EventError) -> None:
        if (source, line.number) in self._seen:
            return
        self._seen.add((source, line.number))
        self.counts[err.reason] += 1
        if self.on_reject is not None:
            self.on_reject()
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        entry = {"file": str(source), "line": line.number, "field": err.field,
                 "reason": err.reason, "message": err.message, "text": line.text}
        if line.raw is not None:
            entry["raw_base64"] = base64.b64encode(line.raw).decode("ascii")
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _time_and_kind(raw: dict[str, Any] | str, kind: EventKind) -> tuple[float, bool] | None:
    """A line's event time and whether it is an item, read without validating the rest
    (the first pass: ~3x faster than validation and encoding); None for a line that
    validation will reject.
    Auto kind: an interactions-topic record has `event_id` or `type` (as
    `mekb.produce.classify` decides)."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(raw, dict) or "ts" not in raw:
        return None
    try:
        ts = event_time(raw["ts"])
    except ValueError:
        return None
    return ts, (kind == "item" or (kind == "auto" and "event_id" not in raw
                                   and "type" not in raw))


def scan(files: list[Path], kind: EventKind, ignore_extra: bool, progress: bool
         ) -> list[FileScan]:
    """First pass: count the events of each file and check their order."""
    from tqdm import tqdm

    scans = []
    bar = tqdm(desc="check order", unit="line", disable=not progress)
    try:
        for path in files:
            s = FileScan(path)
            prev: tuple[int, float] | None = None
            for line, raw in read_lines(path, ignore_extra_columns=ignore_extra):
                s.lines += 1
                bar.update()
                found = None if line.error is not None else _time_and_kind(raw, kind)
                if found is None:
                    continue
                ts, is_item = found
                if is_item:
                    s.items += 1
                else:
                    s.interactions += 1
                if prev is not None and ts < prev[1] and s.unsorted is None:
                    s.unsorted = (line.number, ts, prev[0], prev[1])
                prev = (line.number, ts)
                s.first_ts = ts if s.first_ts is None else min(s.first_ts, ts)
                s.last_ts = ts if s.last_ts is None else max(s.last_ts, ts)
            scans.append(s)
    finally:
        bar.close()
    return scans


def write_run(directory: Path, run: list[Rec]) -> Path:
    run.sort()
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, kept on disk
        "w", dir=directory, suffix=".run", delete=False, encoding="utf-8")
    with handle as fh:
        for ts, _, number, is_item, key, value in run:
            # Keys are ids without control characters and values compact JSON, so
            # neither holds a tab or a newline (mekb.events).
            fh.write(f"{ts!r}\t{number}\t{int(is_item)}\t{key.decode()}\t{value.decode()}\n")
    return Path(handle.name)


def read_run(path: Path, index: int) -> Iterator[Rec]:
    with open(path, encoding="utf-8") as fh:
        for text in fh:
            ts, number, is_item, key, value = text.rstrip("\n").split("\t", 4)
            yield float(ts), index, int(number), is_item == "1", key.encode(), value.encode()


def sort_runs(path: Path, index: int, kind: EventKind, ignore_extra: bool, directory: Path,
              run_size: int, reject: Callable[[Path, Any, EventError], None] | None = None
              ) -> list[Path]:
    """An unsorted file as sorted runs of at most `run_size` (validated) events on disk."""
    runs: list[Path] = []
    it = events(path, index, kind, ignore_extra, reject)
    while True:
        chunk = list(itertools.islice(it, run_size))
        if not chunk:
            return runs
        runs.append(write_run(directory, chunk))


class LagGate:
    """How far a consumer group is behind the records this run produced to one topic:
    Σ over partitions of (the end of our last acknowledged batch - the group's committed
    offset)."""

    def __init__(self, group: str, topic: str, stall_timeout_s: float, admin: Any) -> None:
        self.group = group
        self.topic = topic
        self.stall_timeout_s = stall_timeout_s
        self.admin = admin
        self.produced: dict[int, int] = {}  # partition -> next offset after ours

    def acked(self, partition: int, end: int) -> None:
        self.produced[partition] = max(end, self.produced.get(partition, 0))

    def committed(self) -> dict[int, int]:
        from kafka.errors import KafkaError

        try:
            if hasattr(self.admin, "list_group_offsets"):  # kafka-python 3
                offsets = self.admin.list_group_offsets({self.group: None}).get(self.group, {})
            else:  # kafka-python 2
                offsets = self.admin.list_consumer_group_offsets(self.group)
        except KafkaError as exc:  # no commit of the group yet, or a coordinator moving
            logger.debug("offsets of group %s: %r", self.group, exc)
            return {}
        return {tp.partition: int(om.offset) for tp, om in offsets.items()
                if tp.topic == self.topic and om.offset is not None and om.offset >= 0}

    async def lag(self) -> int:
        done = await asyncio.to_thread(self.committed)
        return sum(max(0, end - done.get(p, 0)) for p, end in self.produced.items())

    async def wait(self, limit: int, on_lag: Callable[[int], None]) -> None:
        """Until the lag is at most `limit`; BackfillError after `stall_timeout_s` without
        the group committing anything new."""
        last_lag, last_move = None, time.monotonic()
        while True:
            lag = await self.lag()
            on_lag(lag)
            if lag <= limit:
                return
            if last_lag is None or lag < last_lag:
                last_lag, last_move = lag, time.monotonic()
            elif time.monotonic() - last_move > self.stall_timeout_s:
                raise BackfillError(
                    f"consumer group {self.group} consumed nothing of {self.topic} for "
                    f"{self.stall_timeout_s:.0f}s ({lag} records behind): is `mekb worker` "
                    "running on these topics? What was sent stays; the rest was not")
            await asyncio.sleep(POLL_S)


class _Batches:
    """Record batches per partition of one topic; the acknowledged ends go to the gate."""

    def __init__(self, producer: Any, topic: str, gate: LagGate) -> None:
        self.producer = producer
        self.topic = topic
        self.gate = gate
        self.open: dict[int, Any] = {}
        self.inflight: list[tuple[int, Any, int]] = []  # partition, future, records

    async def add(self, partition: int, key: bytes, value: bytes) -> None:
        batch = self.open.get(partition)
        if batch is None:
            batch = self.open[partition] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            await self._ship(partition)
            batch = self.open[partition] = self.producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)

    async def _ship(self, partition: int) -> None:
        batch = self.open.pop(partition)
        future = await self.producer.send_batch(batch, self.topic, partition=partition)
        self.inflight.append((partition, future, batch.record_count()))

    async def flush(self) -> None:
        """Send every open batch and wait for every acknowledgement."""
        for partition in list(self.open):
            await self._ship(partition)
        for partition, future, records in self.inflight:
            meta = await future  # the offset of the batch's first record
            self.gate.acked(partition, int(meta.offset) + records)
        self.inflight.clear()


def backfill(
    settings: Settings, path: Path, *, kind: EventKind = "auto", sort: bool = False,
    run_size: int = 1_000_000, max_lag: int = 50_000, wait: bool = True,
    stall_timeout_s: float = 120.0, rejects_path: Path | None = None, progress: bool = True,
    ignore_extra_columns: bool = False,
) -> BackfillReport:
    """Send the log under `path` in event-time order, items first; see the module doc."""
    started = time.monotonic()
    files = discover(path)
    report = BackfillReport(rejects_path=rejects_path or path.with_name(path.name + ".rejected"))
    assert report.rejects_path is not None
    try:
        report.files = scan(files, kind, ignore_extra_columns, progress)
    except ProduceError as exc:
        raise BackfillError(str(exc)) from None
    unsorted = [s for s in report.files if s.unsorted is not None]
    if unsorted and not sort:
        s = unsorted[0]
        assert s.unsorted is not None
        line, ts, prev_line, prev_ts = s.unsorted
        raise BackfillError(
            f"{s.path}: line {line} (event time {_iso(ts)}) is earlier than line {prev_line} "
            f"({_iso(prev_ts)}): not in event-time order ({len(unsorted)} such file(s)); "
            f"nothing was sent. Sort it, or pass --sort (runs of --run-size events sorted "
            "in memory and merged from a temporary directory)")
    rejects = Rejects(report.rejects_path, report.rejected)
    try:
        with tempfile.TemporaryDirectory(prefix="mekb-backfill-") as tmp:
            # Per file, how to open its sorted run(s) again (once per phase).
            sources: list[Callable[[], list[Iterator[Rec]]]] = []
            for index, s in enumerate(report.files):
                if s.unsorted is None:
                    sources.append(partial(_file_source, s.path, index, kind,
                                           ignore_extra_columns, rejects))
                else:
                    runs = sort_runs(s.path, index, kind, ignore_extra_columns, Path(tmp),
                                     run_size, rejects)
                    logger.info("%s: sorted into %d run(s)", s.path, len(runs))
                    sources.append(partial(_runs_source, runs, index))
            asyncio.run(_send(settings, report, sources, rejects, max_lag=max_lag, wait=wait,
                              stall_timeout_s=stall_timeout_s, progress=progress))
    finally:
        rejects.close()
    report.seconds = time.monotonic() - started
    report.waited = wait
    return report


def _file_source(path: Path, index: int, kind: EventKind, ignore_extra: bool,
                 reject: Rejects) -> list[Iterator[Rec]]:
    return [events(path, index, kind, ignore_extra, reject)]


def _runs_source(runs: list[Path], index: int) -> list[Iterator[Rec]]:
    return [read_run(run, index) for run in runs]


async def _send(settings: Settings, report: BackfillReport,
                sources: list[Callable[[], list[Iterator[Rec]]]], rejects: Rejects, *,
                max_lag: int, wait: bool, stall_timeout_s: float, progress: bool) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError as AioKafkaError
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError
    from kafka.partitioner.default import murmur2
    from tqdm import tqdm

    from mekb.kafka_config import bootstrap_servers, kafka_python_config
    from streams.kafka_io import producer_kwargs

    servers = bootstrap_servers(settings)
    producer = AIOKafkaProducer(**producer_kwargs(settings), client_id="mekb-backfill",
                                request_timeout_ms=BOOTSTRAP_TIMEOUT_MS * 3)
    try:
        await producer.start()
        admin = await asyncio.to_thread(KafkaAdminClient, **kafka_python_config(settings),
                                        client_id="mekb-backfill")
    except (KafkaError, AioKafkaError) as exc:
        await producer.stop()
        raise BackfillError(f"broker at {servers} unreachable: {type(exc).__name__}: "
                            f"{exc}") from None
    total = sum(s.lines for s in report.files)
    bar = tqdm(total=total, desc="backfill", unit="ev", disable=not progress, smoothing=0.05)
    rejects.on_reject = lambda: bar.update()
    # Settle (wait for the acknowledgements, check the lag) this often.
    every = max(500, max_lag // 10)
    try:
        phases = [(True, "items", "mekb-items"), (False, "interactions", "mekb-streams")]
        for is_item, name, group in phases:
            # A file is read in a phase if it has lines of that kind; the interactions phase
            # also reads the lines that look like neither (they are rejected there).
            wanted = [bool(s.items) if is_item else s.lines > s.items for s in report.files]
            if not any(wanted):
                continue
            topic = settings.topic(name)
            parts = sorted(await producer.partitions_for(topic))
            gate = LagGate(settings.topic(group), topic, stall_timeout_s, admin)
            batches = _Batches(producer, topic, gate)

            def on_lag(lag: int, name: str = name) -> None:
                bar.set_postfix_str(f"{name} lag {lag}", refresh=False)

            merged = heapq.merge(*(it for want, make in zip(wanted, sources, strict=True)
                                   if want for it in make()))
            sent = 0
            for _, _, _, rec_is_item, key, value in merged:
                if rec_is_item != is_item:
                    continue
                # Kafka's default partitioner (kafka-python's and Java's): murmur2 of the key
                await batches.add(parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)], key, value)
                sent += 1
                bar.update()
                if sent % every == 0:
                    await batches.flush()
                    if wait:
                        await gate.wait(max_lag, on_lag)
            await batches.flush()
            report.sent[topic] += sent
            if wait:
                await gate.wait(0, on_lag)
                if is_item:
                    await asyncio.sleep(ITEM_SETTLE_S)
    except (KafkaError, AioKafkaError) as exc:
        raise BackfillError(
            f"broker at {servers}: {type(exc).__name__}: {exc} (after {bar.n} of {total} "
            "events were handed to the producer)") from None
    finally:
        bar.close()
        await producer.stop()
        admin.close()
