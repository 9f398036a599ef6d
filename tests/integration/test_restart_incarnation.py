"""A restart on the same data directory with a NEW broker (the embedded broker keeps its
topics in memory, so its restart is a new incarnation of every topic, exactly like a
production topic that was deleted and created again): state and models survive, the
offsets stored beside them are rebased to the new topics, the new topics are seeded
from the local state, and every new event, update and example is applied.

Each test runs its own real broker twice (not the session broker): stop -> start is
what `mekb up` does between two runs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mekb.broker import EmbeddedBroker
from mekb.settings import Settings
from mekb.topics import create_topics, topic_ids
from streams.synthetic import generate, reference_counts, reference_df
from tests.integration.streams_helpers import (
    Worker,
    latest_mekbs,
    produce,
    read_topic,
    wait_exact,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextmanager
def broker_run(tmp_path: Path, name: str, **fields: Any) -> Iterator[Settings]:
    """A fresh embedded broker with every topic created, and settings pointing at it."""
    with EmbeddedBroker(log_path=tmp_path / f"{name}.log") as broker:
        settings = Settings(**{"bootstrap_servers": broker.bootstrap_servers,
                               "broker_flavor": "tansu", "topic_prefix": "r-", "partitions": 2,
                               "data_dir": tmp_path / "data", **fields})
        create_topics(settings)
        yield settings


def records_json(pairs: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    out = []
    for _, value in pairs:
        try:
            obj = json.loads(value)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


# --- stream worker -----------------------------------------------------------------------
def linked_entities(settings: Settings, alias: Path, items: list[dict[str, Any]]) -> Any:
    from linker.factory import build_linker
    from mekb.events import ItemEvent

    linker = build_linker(Settings(**{**settings.model_dump(), "alias_table": alias}))
    try:
        events = [ItemEvent.model_validate(x) for x in items]
        return {it.item_id: [(e.entity_id, e.weight) for e in ents]
                for it, ents in zip(events, linker.link_many(events), strict=True)}
    finally:
        linker.close()


def test_worker_restart_on_a_new_broker_keeps_state_and_applies_new_events(
    alias: Path, tmp_path: Path
) -> None:
    # every entity kept (no order-dependent eviction), so the reference is exact
    fields: dict[str, Any] = {"mekb_max_entities": 100_000, "example_entities": 0}
    log = generate(n_users=60, n_items=80, n_events=3000, n_entities=120, seed=11,
                   dup_rate=0.10, malformed_rate=0.02, late_rate=0.10)
    pairs = list(zip(log.keys, log.interactions, strict=True))
    cut = len(pairs) // 2
    late = {str(x["item_id"]) for x in log.late_items}
    known = str(log.items[0]["item_id"])
    # a user whose events all come in run 1: after run 2 only the seeded topics know it
    solo = [{"event_id": "solo-1", "user_id": "solo", "item_id": known, "domain": "drama",
             "action": "click", "ts": 10.0}]
    solo_later = [{**solo[0], "event_id": "solo-2", "ts": 20.0}]
    first = {str(e["event_id"]) for e in records_json(pairs[:cut])}

    def pairs_of(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
        return [(str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events]

    with broker_run(tmp_path, "broker1", **fields) as s1:
        ents = linked_entities(s1, alias, log.items + log.late_items)

        def ref_of(events: list[dict[str, Any]]) -> tuple[Any, dict[str, int], int]:
            ref = reference_counts(events, lambda i: ents[i])
            return (ref, *reference_df(ref))

        produce(s1, "items", [(str(x["item_id"]).encode(), json.dumps(x).encode())
                              for x in log.items])
        worker = Worker(s1, alias, "w1", tmp_path / "w1.log")
        try:
            worker.wait_ready()
            worker.wait_items(len(log.items))
            produce(s1, "interactions", pairs[:cut] + pairs_of(solo))
            # run 1's state: the first half whose items are known (the rest is parked)
            wait_exact(s1, *ref_of([e for e in log.valid if e["event_id"] in first
                                    and e["item_id"] not in late] + solo))
        finally:
            assert worker.stop() == 0
        old_ids = topic_ids(s1, [s1.topic("interactions")])

    with broker_run(tmp_path, "broker2", **fields) as s2:
        assert topic_ids(s2, [s2.topic("interactions")]) != old_ids  # a new incarnation
        # `mekb up` replays the items on every run: the item table lives in the broker
        produce(s2, "items", [(str(x["item_id"]).encode(), json.dumps(x).encode())
                              for x in log.items])
        worker = Worker(s2, alias, "w1", tmp_path / "w2.log")
        try:
            worker.wait_ready()
            worker.wait_items(len(log.items))
            # the second half (with redeliveries of first-half events: duplicates by
            # event_id), then the late items that run 1's parked events wait for
            produce(s2, "interactions", pairs[cut:])
            produce(s2, "items", [(str(x["item_id"]).encode(), json.dumps(x).encode())
                                  for x in log.late_items])
            # every user, with df and N, from the new broker's topics: run 1's users come
            # from the re-seeded mekb-updates / df-partials, run 2's events are applied
            wait_exact(s2, *ref_of(log.valid + solo))
            assert "mekb-changelog is a new topic" in worker.log.read_text()
            assert "input offsets rebased" in worker.log.read_text()
            worker.kill()
            # the changelog was seeded too: a worker without its RocksDB restores `solo`
            # (untouched in run 2) from it, and a new event of `solo` adds to that state
            shutil.rmtree(s2.data_dir / "streams" / "w1")
            worker = Worker(s2, alias, "w1", tmp_path / "w3.log")
            worker.wait_ready()
            produce(s2, "interactions", pairs_of(solo_later))
            wait_exact(s2, *ref_of(log.valid + solo + solo_later))
            assert latest_mekbs(s2)["solo"]["version"] == 2
        finally:
            assert worker.stop() == 0


RefOf = Callable[[list[dict[str, Any]]], tuple[Any, dict[str, int], int]]


def _first_half_applied(s: Settings, alias: Path, log: Any, pairs: list[tuple[bytes, bytes]],
                        cut: int, tmp_path: Path) -> tuple[Worker, RefOf]:
    """Items produced, worker w1 started, the first `cut` interactions applied exactly;
    returns the running worker and the reference (counts, df, N) of a list of events."""
    ents = linked_entities(s, alias, log.items)

    def ref_of(events: list[dict[str, Any]]) -> tuple[Any, dict[str, int], int]:
        ref = reference_counts(events, lambda i: ents[i])
        return (ref, *reference_df(ref))

    produce(s, "items", [(str(x["item_id"]).encode(), json.dumps(x).encode())
                         for x in log.items])
    first = {str(e["event_id"]) for e in records_json(pairs[:cut])}
    worker = Worker(s, alias, "w1", tmp_path / "w1.log")
    try:
        worker.wait_ready()
        worker.wait_items(len(log.items))
        produce(s, "interactions", pairs[:cut])
        wait_exact(s, *ref_of([e for e in log.valid if e["event_id"] in first]))
    except BaseException:
        worker.stop()
        raise
    return worker, ref_of


def _commit_group_at_end(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Join `group` (it has no other member now), take every partition of `topic` and
    commit its end offset; returns the committed offsets read back."""
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata

    from mekb.kafka_config import kafka_python_config

    consumer = KafkaConsumer(**kafka_python_config(settings), group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        consumer.subscribe([settings.topic(topic)])
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=500, max_records=1)
        tps = sorted(consumer.assignment())
        # read, not asked: Tansu's ListOffsets answers are not the log ends
        ends: dict[int, int] = {}
        for rec in read_topic(settings, topic):
            ends[rec.partition] = max(ends.get(rec.partition, 0), rec.offset + 1)
        consumer.commit({tp: OffsetAndMetadata(ends[tp.partition], "", -1) for tp in tps})
        return {tp.partition: consumer.committed(tp) for tp in tps}
    finally:
        consumer.close()


def test_worker_resumes_from_its_state_not_from_a_group_offset_ahead_of_it(
    alias: Path, tmp_path: Path
) -> None:
    """The group's committed offset can be ahead of the state: after a broker restart the
    consumer, still holding the old assignment, reads the new topic from its start, the old
    state skips those records as applied and commits past them (seen as a flaky failure of
    the next test). A worker resumes from its state's own position: here the group's offset
    is moved to the end of the topic while the worker is down, and every event the state
    has not applied must still be applied."""
    fields: dict[str, Any] = {"mekb_max_entities": 100_000, "example_entities": 0}
    log = generate(n_users=30, n_items=40, n_events=800, n_entities=120, seed=7,
                   dup_rate=0.10, malformed_rate=0.02)
    pairs = list(zip(log.keys, log.interactions, strict=True))
    cut = len(pairs) // 2
    with broker_run(tmp_path, "broker", **fields) as s:
        worker, ref_of = _first_half_applied(s, alias, log, pairs, cut, tmp_path)
        assert worker.stop() == 0
        produce(s, "interactions", pairs[cut:])
        committed = _commit_group_at_end(s, s.topic("mekb-streams"), "interactions")
        assert sum(committed.values()) == len(pairs)  # the group is past every record
        worker = Worker(s, alias, "w1", tmp_path / "w2.log")
        try:
            worker.wait_ready()
            wait_exact(s, *ref_of(log.valid))
        finally:
            assert worker.stop() == 0


def test_worker_follows_a_broker_restart_while_it_runs(alias: Path, tmp_path: Path) -> None:
    """What `mekb up` does when the embedded broker crashes: a new, empty broker on the same
    port, topics created again, the worker still running. Its items are not produced
    again: the worker's own item table must come back to item-entities."""
    # 4 partitions: Tansu's default, with which a client that reconnects to the new broker
    # auto-creates its topics before create_topics runs (as under `mekb up`'s defaults)
    fields: dict[str, Any] = {"mekb_max_entities": 100_000, "example_entities": 0, "partitions": 4}
    log = generate(n_users=30, n_items=40, n_events=1200, n_entities=120, seed=5,
                   dup_rate=0.10)
    pairs = list(zip(log.keys, log.interactions, strict=True))
    cut = len(pairs) // 2
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        s = Settings(**{"bootstrap_servers": broker.bootstrap_servers, "broker_flavor": "tansu",
                        "topic_prefix": "r-", "data_dir": tmp_path / "data", **fields})
        create_topics(s)
        worker, ref_of = _first_half_applied(s, alias, log, pairs, cut, tmp_path)
        try:
            broker.stop()
            broker.start()  # same port, no topics
            create_topics(s)
            produce(s, "interactions", pairs[cut:])
            wait_exact(s, *ref_of(log.valid))
            assert worker.proc.poll() is None, "the worker exited"
            assert "restarting the agents on the new topics" in worker.log.read_text()
        finally:
            assert worker.stop() == 0


# --- serving replica ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from mekb.registry import Registry
    from trainer.export import write_bundle
    from trainer.model import EmbedMe, EmbedMeConfig

    root = tmp_path_factory.mktemp("restart-serving")
    reg = Registry(root / "registry")
    torch.manual_seed(1)
    model = EmbedMe(EmbedMeConfig(max_tokens=16), ["m1", "m2"], ["movies", "movies"]).eval()
    reg.publish(write_bundle(model, root / "bundle", version="20261129T100000Z-000001"),
                move=True)
    reg.activate("20261129T100000Z-000001")
    return reg.root


def update(user: str, version: int, title: str) -> tuple[bytes, bytes]:
    value = {"v": 1, "user_id": user, "version": version, "ts": 1.0, "updated_at": time.time(),
             "n_users": 1, "seen_items": [],
             "entities": [{"id": f"kb:{title}", "title": title, "k": 1.0, "score": 1.0}]}
    return user.encode(), json.dumps(value).encode()


def test_serving_replica_on_a_new_broker_applies_new_updates(
    registry_dir: Path, tmp_path: Path
) -> None:
    from tests.integration.test_serving_process import ServeProcess

    data = tmp_path / "data"
    with EmbeddedBroker(log_path=tmp_path / "broker1.log") as b1:
        serve = ServeProcess(b1, data, registry_dir, "r-", tmp_path / "serve1.log")
        create_topics(serve.settings)
        serve.start()
        try:
            produce(serve.settings, "mekb-updates",
                    [update(u, v, f"{u} {v}") for v in (1, 2, 3) for u in ("alice", "bob")])
            assert serve.wait_version("alice", 3, 10)["mekb_version"] == 3
            assert serve.wait_version("bob", 3, 10)["mekb_version"] == 3
        finally:
            assert serve.stop() == 0
    with EmbeddedBroker(log_path=tmp_path / "broker2.log") as b2:
        serve = ServeProcess(b2, data, registry_dir, "r-", tmp_path / "serve2.log")
        create_topics(serve.settings)
        # Written before serving starts, so that the replica's stored offsets (3 per
        # partition) lie inside the new topic: offsets taken for the old topic's would
        # skip alice's new version and erin, the new user.
        produce(serve.settings, "mekb-updates",
                [update("alice", 4, "alice 4"), update("erin", 1, "erin 1"),
                 *[update(f"filler{n}", 1, "x") for n in range(24)]])
        serve.start()
        try:
            c = serve.client
            assert serve.wait_version("alice", 4, 10)["mekb_version"] == 4
            erin = c.get("/v1/users/erin/mekb")
            assert erin.status_code == 200, erin.text
            assert [e["title"] for e in erin.json()["entities"]] == ["erin 1"]
            # bob is in no record of the new topic: served from the kept replica
            assert c.get("/v1/users/bob/embedding").json()["mekb_version"] == 3
            # and the new topic is followed live
            produce(serve.settings, "mekb-updates", [update("bob", 4, "bob 4")])
            assert serve.wait_version("bob", 4, 10)["mekb_version"] == 4
            assert "is a new topic" in serve.log.read_text()
            # the broker restarts under the running server (what `mekb up` does when it
            # crashed): the replica notices the new topic and reads it from its start
            b2.stop()
            b2.start()
            create_topics(serve.settings)
            produce(serve.settings, "mekb-updates", [update("erin", 2, "erin 2")])
            assert serve.wait_version("erin", 2, 30)["mekb_version"] == 2
            assert serve.wait_version("bob", 4, 1)["mekb_version"] == 4
        finally:
            assert serve.stop() == 0


# --- trainer -----------------------------------------------------------------------------
def test_trainer_on_a_new_broker_keeps_weights_and_trains_new_examples(tmp_path: Path) -> None:
    from tests.integration.test_trainer_process import (
        Trainer,
        checkpoint_state,
        examples,
        wait_for,
    )
    from tests.integration.test_trainer_process import produce_one_per_batch as produce_each

    quiet = {"MEKB_TRAINER_PUBLISH_EVERY": "100000", "MEKB_TRAINER_MAX_TOKENS": "16"}
    outcomes = [f'mekb_trainer_examples_total{{outcome="{o}"}}'
                for o in ("trained", "held_out", "invalid", "skipped")]

    def seen(trainer: Trainer) -> float:
        return sum(trainer.metric(name) for name in outcomes)

    # 4 partitions: Tansu's default, with which the running trainer's consumer auto-creates
    # the topic on the restarted broker before create_topics runs
    with broker_run(tmp_path, "broker1", partitions=4) as s1:
        trainer = Trainer(s1, tmp_path / "trainer1.log", **quiet)
        try:
            trainer.wait_healthy()
            produce_each(s1, "training-examples", examples(0, 16))
            wait_for(lambda: seen(trainer) == 16, 120, "run 1's examples", trainer)
        finally:
            assert trainer.stop() == 0, trainer.tail()
        before = checkpoint_state(s1)
        assert sum(before["offsets"].values()) == 16
        topic = s1.topic("training-examples")
        assert before["topic_ids"] == topic_ids(s1, [topic])

    with EmbeddedBroker(log_path=tmp_path / "broker2.log") as b2:
        s2 = Settings(**{**s1.model_dump(), "bootstrap_servers": b2.bootstrap_servers})
        create_topics(s2)
        # before the trainer starts: its stored offsets lie inside the new topic, so
        # offsets taken for the old topic's would skip most of these 30
        produce_each(s2, "training-examples", examples(16, 30))
        trainer = Trainer(s2, tmp_path / "trainer2.log", **quiet)
        try:
            health = trainer.wait_healthy()
            assert health["source"] == "checkpoint"  # the weights of run 1
            wait_for(lambda: seen(trainer) == 30, 120, "every example of run 2", trainer)
            assert trainer.metric('mekb_trainer_examples_total{outcome="skipped"}') == 0
            # the broker restarts under the running trainer: it goes on with the new topic
            b2.stop()
            b2.start()
            create_topics(s2)
            produce_each(s2, "training-examples", examples(100, 8))
            wait_for(lambda: seen(trainer) == 38, 120, "the examples after the restart",
                     trainer)
        finally:
            assert trainer.stop() == 0, trainer.tail()
        after = checkpoint_state(s2)
        assert sum(after["offsets"].values()) == 8
        assert after["topic_ids"] == topic_ids(s2, [topic])
        assert after["topic_ids"] != before["topic_ids"]
        assert after["step"] > before["step"]
        assert after["examples_seen"] > before["examples_seen"]


# --- the whole system: `mekb up` twice on one data directory ------------------------------
def test_mekb_up_twice_on_one_data_dir_applies_the_second_runs_events(tmp_path: Path) -> None:
    """Run 1 replays the first 300 ratings and stops; run 2 (a new embedded broker, the
    items replayed again) replays the ratings up to the 600th it has not sent yet: they
    are applied, and the served MeKBs (new users' too) equal an independent computation
    over all 600, with the default dedupe window."""
    import signal
    import subprocess
    import sys
    import threading

    from mekb.broker import free_port
    from tests.integration.system_helpers import (
        child_env,
        default_alias_table,
        http,
        reference_counts,
        wait_for,
    )

    data = tmp_path / "data"
    ports = {name: free_port() for name in ("worker", "trainer", "serving", "monitor")}
    alias = default_alias_table()
    env = child_env(
        MEKB_DATA_DIR=data, MEKB_ALIAS_TABLE=alias,
        MEKB_WORKER_PORT=ports["worker"], MEKB_TRAINER_PORT=ports["trainer"],
        MEKB_SERVING_PORT=ports["serving"], MEKB_MONITOR_PORT=ports["monitor"],
        MEKB_TRAINER_MAX_TOKENS=16, MEKB_TRAINER_DIM=32,
        # the model kind is not what this test is about (test_up covers mekb up's default)
        MEKB_MODEL_KIND="embedme",
    )
    argv = [sys.executable, "-m", "mekb.cli.main", "up", "--rate", "0", "--no-prometheus"]
    first = subprocess.run([*argv, "--limit", "300", "--once"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:]
    old_users = {json.loads(line)["user_id"]
                 for line in (data / "sample" / "interactions.jsonl").open()}
    replayed = json.loads((data / "sample" / "replayed.json").read_text())["lines"]
    assert replayed == len((data / "sample" / "interactions.jsonl").read_text().splitlines())

    second = subprocess.Popen([*argv, "--limit", "600"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert second.stdout is not None
    out = second.stdout
    threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
    try:
        wait_for(lambda: any("MeKB-Stream is up" in line for line in lines)
                 or second.poll() is not None, 600, "run 2 to be up")
        assert second.poll() is None, "".join(lines)[-5000:]
        # run 2 sends only the ratings run 1 did not (all items again: the broker is new)
        total = len((data / "sample" / "interactions.jsonl").read_text().splitlines())
        assert any(f"replayed interactions.new.jsonl: sent {total - replayed} events" in line
                   for line in lines), "".join(lines)[-3000:]
        ref = reference_counts(data / "sample" / "items.jsonl",
                               data / "sample" / "interactions.jsonl", alias)
        fits = [u for u, ks in ref.items() if 3 <= len(ks) <= 100]  # no top-M eviction
        new_users = sorted(u for u in fits if u not in old_users)[:4]
        old = sorted(u for u in fits if u in old_users)[:4]
        assert new_users and old
        api = f"http://127.0.0.1:{ports['serving']}"
        for user in new_users + old:
            def matches(user: str = user) -> bool:
                status, body = http("GET", f"{api}/v1/users/{user}/mekb")
                if status != 200:
                    return False
                got = {e["id"]: e["k"] for e in body["entities"]}
                want = ref[user]
                return set(got) == set(want) and all(abs(got[e] - want[e]) < 1e-6 for e in want)
            wait_for(matches, 60, f"MeKB of {user} to equal the reference")
        log = (data / "logs" / "worker.log").read_text()
        assert "input offsets rebased" in log and "seeding it from the local state" in log

        # (the trainer's consumption after the rebase is checked with exact counts in
        # test_trainer_on_a_new_broker_keeps_weights_and_trains_new_examples)
        assert "training-examples is a new topic" in (data / "logs" / "trainer.log").read_text()
    finally:
        second.send_signal(signal.SIGINT)
        try:
            second.wait(90)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait()


def test_mekb_up_stopped_right_after_the_replay_keeps_every_rating_it_marks(
        tmp_path: Path) -> None:
    """Ctrl-C the moment `mekb up` has sent the ratings (no model served yet, so the
    stream worker may not have applied them): the run waits for the worker to make them
    durable before it records them as replayed, so every rating recorded is in the
    worker's RocksDB state (the next run's new broker never sees them again), and with
    the stop's grace all 300 are. Before, the run recorded them as soon as they were
    sent, and a stop before the worker applied them lost them for good."""
    import signal
    import subprocess
    import sys
    import threading

    from mekb.broker import free_port
    from streams.codec import UserState
    from streams.partition import USER
    from streams.state.rocksdb import RocksDBStore
    from tests.integration.system_helpers import (
        child_env,
        default_alias_table,
        reference_counts,
        wait_for,
    )

    data = tmp_path / "data"
    alias = default_alias_table()
    env = child_env(MEKB_DATA_DIR=data, MEKB_ALIAS_TABLE=alias,
                    **{f"MEKB_{name}_PORT": free_port()
                       for name in ("WORKER", "TRAINER", "SERVING", "MONITOR")})
    run = subprocess.Popen(
        [sys.executable, "-m", "mekb.cli.main", "up", "--rate", "0", "--no-prometheus",
         "--limit", "300"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines: list[str] = []
    assert run.stdout is not None
    out = run.stdout
    sent = threading.Event()

    def read() -> None:
        for line in out:
            lines.append(line)
            if line.startswith("replayed interactions.jsonl"):
                run.send_signal(signal.SIGINT)  # at once, from the reading thread
                sent.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: sent.is_set() or run.poll() is not None, 600, "the replay")
        assert sent.is_set(), "".join(lines)[-5000:]
        assert run.wait(120) == 0, "".join(lines)[-5000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    log = "".join(lines)
    assert "replayed interactions.jsonl: sent 300 events" in log, log[-3000:]
    assert "MeKB-Stream is up" not in log  # stopped before any model served
    sample = data / "sample"
    marked = json.loads((sample / "replayed.json").read_text())["lines"]
    assert marked == 300, log[-3000:]  # the grace let the worker apply every one

    head = tmp_path / "marked.jsonl"
    head.write_text("".join((sample / "interactions.jsonl").open().readlines()[:marked]))
    want = {u: ks for u, ks in reference_counts(sample / "items.jsonl", head, alias).items()
            if ks}
    store = RocksDBStore(data / "streams" / "worker-0")
    try:
        got: dict[str, dict[str, float]] = {}
        for key, value in store.scan(b""):
            _, _, local = key.partition(b"/")
            if local.startswith(USER) and (counts := UserState.decode(value).counts):
                got[local[len(USER):].decode()] = counts
    finally:
        store.close()
    assert set(got) == set(want)
    exact = {u: ks for u, ks in want.items() if len(ks) <= 100}  # no top-M eviction
    assert len(exact) >= 2  # (the sample's first 300 ratings come from a few users)
    for user, counts in exact.items():
        assert set(got[user]) == set(counts), user
        assert all(abs(got[user][e] - k) < 1e-6 for e, k in counts.items()), user
