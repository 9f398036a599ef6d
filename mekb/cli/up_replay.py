"""`mekb up`'s replay of the bundled sample into the system it started.

Items are sent on every run (the embedded broker forgets them); ratings once per data
directory, because the stream worker's state keeps them. "Once" is recorded only for
ratings the worker has made durable: the next run starts a new, empty embedded broker,
so a rating recorded as replayed but never applied would be lost for good, and one
applied but not recorded is sent again (the per-user event_id window drops such
duplicates, but only within its size).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mekb.settings import Settings

if TYPE_CHECKING:
    from mekb.supervisor import Supervisor

# Seconds the ratings wait for the stream worker to know the replayed items.
ITEMS_WAIT_S = 300.0
# Seconds the applied offsets may stand still, the worker alive, before `mekb up` stops
# waiting for them (the ratings not applied by then are sent again by the next run).
APPLY_STALL_S = 120.0
# Seconds a stop (Ctrl-C, SIGTERM) still waits for the worker to apply what was sent.
STOP_GRACE_S = 30.0


def health(port: int) -> dict[str, Any] | None:
    """A component's /healthz body while it answers 200, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            body = json.loads(resp.read() or b"{}")
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def replay_items(settings: Settings, supervisor: Supervisor, stop: threading.Event,
                 items: Path, *, progress: bool) -> None:
    from mekb.produce import produce_file

    report = produce_file(settings, items, progress=progress, stop=stop)
    typer.echo(f"replayed {items.name}: {report.summary()}")
    wait_items_known(settings, supervisor, stop, report.total_sent)


def wait_items_known(settings: Settings, supervisor: Supervisor, stop: threading.Event,
                     expected: int, timeout_s: float = ITEMS_WAIT_S) -> None:
    """Wait until the stream worker's item table holds the `expected` items replayed.

    A rating of an item the worker does not know yet is parked until the item is linked,
    and a parked rating gives no training example (its user's MeKB may have moved on in
    the meantime: streams/partition.py). Sent right behind the items, a few hundred
    ratings all parked while the worker was still linking, and EntityGraph, whose first
    version needs training examples, never got one."""
    deadline = time.monotonic() + timeout_s
    known = 0
    while not stop.is_set():
        supervisor.check()
        known = int((health(settings.worker_port) or {}).get("items") or 0)
        if known >= expected:
            return
        if time.monotonic() > deadline:
            typer.echo(f"warning: the stream worker knows {known} of the {expected} items "
                       f"after {timeout_s:.0f}s; replaying the ratings anyway (those of "
                       "items it does not know yet give no training examples)", err=True)
            return
        stop.wait(0.5)


def replay_ratings(settings: Settings, supervisor: Supervisor, stop: threading.Event,
                   interactions: Path, *, rate: float, progress: bool) -> None:
    """Send the sample's ratings this data directory does not hold yet, wait until the
    stream worker has made them durable, and record as replayed the lines it has — also
    when the wait ends early (a stop, a stalled or failed worker, a broker error)."""
    from mekb.produce import Deliveries, produce_file
    from mekb.sample import mark_replayed, replayed_lines, unreplayed
    from mekb.topics import topic_ids

    topic = settings.topic("interactions")
    topic_id = topic_ids(settings, [topic]).get(topic)
    done = replayed_lines(interactions)
    deliveries = Deliveries()
    applied: dict[int, int] = {}
    try:
        path = unreplayed(interactions)
        report = produce_file(settings, path, rate=rate, progress=progress,
                              deliveries=deliveries, stop=stop)
        typer.echo(f"replayed {path.name}: {report.summary()}")
        applied = _wait_applied(settings, supervisor, stop, topic_id,
                                deliveries.ends(topic))
    finally:
        applied = _applied(settings, topic_id) or applied
        kept = deliveries.applied_prefix(topic, applied)
        mark_replayed(interactions, done + kept)
        if kept < deliveries.reached:
            typer.echo(f"warning: the stream worker applied {kept} of the "
                       f"{deliveries.reached} ratings read; the next `mekb up` on "
                       f"{settings.data_dir} sends the other {deliveries.reached - kept} "
                       "again", err=True)


def _applied(settings: Settings, topic_id: str | None) -> dict[int, int] | None:
    """The stream worker's durable next offset per interactions partition (only those
    counted in the topic `topic_id`, the one replayed into), or None if it does not
    answer."""
    body = health(settings.worker_port)
    if body is None or not isinstance(body.get("applied"), dict):
        return None
    return {int(p): int(v["next_offset"]) for p, v in body["applied"].items()
            if v.get("topic_id") == topic_id}


def _wait_applied(settings: Settings, supervisor: Supervisor, stop: threading.Event,
                  topic_id: str | None, ends: dict[int, int]) -> dict[int, int]:
    """Wait until every partition's applied offset reaches `ends` (the replay's), while
    it moves; a stop leaves STOP_GRACE_S more. Returns the last applied offsets read."""
    applied: dict[int, int] = {}
    started = moved_at = time.monotonic()
    grace_end: float | None = None
    told = False
    while True:
        now = time.monotonic()
        seen = _applied(settings, topic_id)
        if seen is not None and seen != applied:
            applied, moved_at = seen, now
        missing = sum(max(0, end - applied.get(p, 0)) for p, end in ends.items())
        if missing == 0:
            if told:
                typer.echo("the stream worker applied every replayed rating")
            return applied
        supervisor.check()
        if stop.is_set() and grace_end is None:
            grace_end = now + STOP_GRACE_S
            typer.echo(f"stopping: waiting up to {STOP_GRACE_S:.0f}s for the stream worker "
                       f"to apply the last {missing} replayed ratings")
            told = True
        elif not told and now - started >= 2.0:
            typer.echo(f"waiting for the stream worker to apply the last {missing} "
                       "replayed ratings ...")
            told = True
        if (grace_end is not None and now > grace_end) or now - moved_at > APPLY_STALL_S:
            typer.echo(f"warning: the stream worker has not applied {missing} replayed "
                       "ratings; not waiting longer", err=True)
            return applied
        time.sleep(0.2)
