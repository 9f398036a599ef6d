"""User deletion, decay and TTL through the real broker, worker processes, RocksDB,
`mekb users delete` and `mekb serve`: the state equals an independent reference
(df and N included) after a SIGKILL mid-delete, across two workers, and after a
restore from the changelog."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from mekb.broker import free_port
from mekb.events import EventError, parse_interaction
from mekb.registry import Registry
from mekb.settings import Settings
from mekb.topics import create_topics
from serving.testing import write_tiny_bundle
from streams.synthetic import generate, reference_counts, reference_df
from tests.integration.streams_helpers import (
    Worker,
    latest_mekbs,
    produce,
    read_topic,
    wait_exact,
)
from tests.integration.system_helpers import Process, child_env, http, wait_for
from tests.integration.test_streams_worker import (
    events_pairs,
    items_pairs,
    linked,
)
from tests.retention_reference import reference_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = "retention-admin-key"
VERSION = "20261130T000000Z-e5a5e1"


def valid_events(pairs: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """The unique valid interactions among produced records, in produce order."""
    out, seen = [], set()
    for _, value in pairs:
        try:
            event = parse_interaction(value)
        except EventError:
            continue
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(json.loads(value))
    return out


def test_erasure_is_exact_through_the_cli_the_http_api_and_a_sigkill(
    settings: Settings, alias: Path, tmp_path: Path
) -> None:
    wsettings = Settings(**{**settings.model_dump(), "mekb_max_entities": 100_000,
                            "example_entities": 0})
    create_topics(wsettings)
    log = generate(n_users=20, n_items=60, n_events=1000, n_entities=120, seed=21,
                   dup_rate=0.05, malformed_rate=0.01)
    ents = linked(wsettings, alias, log)
    item_ids = [str(x["item_id"]) for x in log.items]
    reg = Registry(wsettings.data_dir / "registry")
    reg.publish(write_tiny_bundle(tmp_path / "bundle", version=VERSION, item_ids=item_ids,
                                  domains=[str(x["domain"]) for x in log.items]), move=True)
    reg.activate(VERSION)
    port = free_port()
    env = child_env(
        MEKB_BOOTSTRAP_SERVERS=wsettings.bootstrap_servers, MEKB_BROKER_FLAVOR="tansu",
        MEKB_TOPIC_PREFIX=wsettings.topic_prefix, MEKB_PARTITIONS=2,
        MEKB_DATA_DIR=wsettings.data_dir, MEKB_SERVING_PORT=port, MEKB_SERVING_ADMIN_KEY=ADMIN,
    )
    api = f"http://127.0.0.1:{port}"
    pairs = events_pairs(log)
    half = len(pairs) // 2
    first = pairs[:half]
    gone, back = "u1", ("u2", "u3")  # u1 never comes back; u2, u3 do, with new events
    first_ids = {e["event_id"] for e in valid_events(first)}
    # after the deletions: nothing of u1, and no copy of an event from before them
    # (a copy produced after a deletion would count as a new event: docs/contracts.md)
    second = [(k, v) for k, v in pairs[half:] if k != gone.encode() and not (
        k.decode() in back and v.startswith(b"{") and json.loads(v).get("event_id") in first_ids)]

    produce(wsettings, "items", items_pairs(log.items))
    worker = Worker(wsettings, alias, "w1", tmp_path / "w1.log")
    serving = Process("serving", ["serve"], env, tmp_path)
    try:
        worker.wait_ready()
        worker.wait_items(len(log.items))
        serving.wait_http(f"{api}/readyz")
        produce(wsettings, "interactions", first)
        wait_for(lambda: all(http("GET", f"{api}/v1/users/{u}/mekb")[0] == 200
                             for u in (gone, *back)), 60, "serving to have the users")
        assert http("GET", f"{api}/v1/users/{gone}/embedding")[0] == 200  # cached now

        assert http("DELETE", f"{api}/v1/users/{gone}")[0] == 401  # admin only
        status, body = http("DELETE", f"{api}/v1/users/{gone}", headers={"X-API-Key": ADMIN})
        assert status == 202 and body["user_id"] == gone and body["status"] == "accepted"
        done = subprocess.run(
            [sys.executable, "-m", "mekb.cli.main", "users", "delete", *back], env=env,
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "published 2 deletion(s)" in done.stdout
        produce(wsettings, "interactions", second)
        time.sleep(0.3)
        worker.kill()  # SIGKILL while the deletions and what follows are being applied
        worker = Worker(wsettings, alias, "w1", tmp_path / "w1b.log")
        worker.wait_ready()

        kept = [e for e in valid_events(first + second)
                if not (e["user_id"] in (gone, *back) and e["event_id"] in first_ids)]
        ref = reference_counts(kept, lambda i: ents[i])
        assert gone not in ref and all(u in ref for u in back)
        ref_df, ref_n = reference_df(ref)
        wait_exact(wsettings, ref, ref_df, ref_n)

        def served() -> bool:
            if http("GET", f"{api}/v1/users/{gone}/mekb")[0] != 404:
                return False
            for user in back:
                status, body = http("GET", f"{api}/v1/users/{user}/mekb")
                got = {e["id"]: e["k"] for e in body.get("entities", [])} if status == 200 else {}
                if set(got) != set(ref[user]) or any(
                        abs(got[e] - ref[user][e]) > 1e-9 for e in got):
                    return False
            return True
        wait_for(served, 60, "serving to forget u1 and hold the new MeKBs of u2, u3")
        status, body = http("GET", f"{api}/v1/users/{gone}/embedding")
        assert status == 200 and body["mekb_ts"] is None  # a cold start: nothing cached
    finally:
        assert worker.stop() == 0
        serving.stop()
    check_tombstones(wsettings, gone, back, kept, ents)


def check_tombstones(settings: Settings, gone: str, back: tuple[str, ...],
                     kept: list[dict[str, Any]], ents: Any) -> None:
    """The changelog ends u1 with a tombstone (compaction forgets it); training-examples
    has one per deleted user after its examples, u1 has no example after it, and the
    examples of u2's and u3's new MeKBs hold their new events only."""
    last: dict[bytes, bytes | None] = {}
    for rec in read_topic(settings, "mekb-changelog"):
        last[rec.key] = rec.value
    assert last[b"u\x00" + gone.encode()] is None
    examples: dict[str, list[Any]] = {}
    for rec in read_topic(settings, "training-examples"):
        examples.setdefault(rec.key.decode(), []).append(rec.value)
    for user in (gone, *back):
        assert None in examples[user], user
    after = examples[gone][examples[gone].index(None):]
    assert all(v is None for v in after)
    position = {e["event_id"]: n for n, e in enumerate(kept)}
    checked = 0
    for user in back:
        for value in examples[user][examples[user].index(None):]:
            if value is None:
                continue
            ex = json.loads(value)
            earlier = [e for e in kept[:position[ex["example_id"]]] if e["user_id"] == user]
            want = reference_counts(earlier, lambda i: ents[i]).get(user, {})
            got = {e["id"]: e["k"] for e in ex["entities"]}
            assert set(got) == set(want), ex["example_id"]
            assert all(abs(got[e] - want[e]) < 1e-9 for e in got)
            checked += 1
    assert checked >= 2
    assert gone not in latest_mekbs(settings)


def partition_of(n: int) -> Any:
    """The producer's partitioner (kafka-python's murmur2, as Kafka's Java client)."""
    return lambda user: (murmur2(user.encode()) & 0x7FFFFFFF) % n


def test_decay_and_ttl_are_exact_across_two_workers_and_a_restore(
    settings: Settings, alias: Path, tmp_path: Path
) -> None:
    rs = Settings(**{**settings.model_dump(), "mekb_max_entities": 100_000,
                     "example_entities": 0, "decay_half_life_s": 60.0, "decay_min_k": 0.05,
                     "user_ttl_s": 300.0})
    create_topics(rs)
    # one event a second (event time): each partition's stream time moves ~0.5 s per event
    log = generate(n_users=40, n_items=60, n_events=1200, n_entities=120, seed=9,
                   dup_rate=0.05, malformed_rate=0.01)
    ents = linked(rs, alias, log)
    pairs = events_pairs(log)
    cut = 2 * len(pairs) // 3

    def reference(upto: int) -> tuple[dict[str, dict[str, float]], dict[str, int], int, Any]:
        ref = reference_states(valid_events(pairs[:upto]), lambda i: ents[i],
                               partition_of(rs.partitions), half_life=60.0, min_k=0.05,
                               ttl=300.0)
        df, n = reference_df(ref.users)
        return ref.users, df, n, ref

    produce(rs, "items", items_pairs(log.items))
    a = Worker(rs, alias, "wa", tmp_path / "wa.log")
    b = Worker(rs, alias, "wb", tmp_path / "wb.log")
    try:
        a.wait_ready()
        b.wait_ready()
        # Every item linked first: the reference applies events in order, and with decay
        # an interaction parked for an unknown item and applied late is not equal to
        # in-order application where pruning intervened (README, "Interest decay").
        a.wait_items(len(log.items))
        b.wait_items(len(log.items))
        produce(rs, "interactions", pairs[:cut])
        users, df, n, ref = reference(cut)
        assert ref.expired > 10 and ref.pruned > 10  # both mechanisms at work
        assert len(users) < 40
        wait_exact(rs, users, df, n)
        b.kill()  # its partitions move to a, restored from the changelog (a lacks them)
        shutil.rmtree(rs.data_dir / "streams" / "wb")
        produce(rs, "interactions", pairs[cut:])
        time.sleep(1.0)
        b = Worker(rs, alias, "wb", tmp_path / "wb2.log")  # and back, from the changelog
        b.wait_ready()
        users, df, n, _ = reference(len(pairs))
        wait_exact(rs, users, df, n)
        assert a.health()["partitions"] and b.health()["partitions"]  # type: ignore[index]
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
