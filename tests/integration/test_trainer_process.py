"""`mekb trainer` as a real process against the real broker, with the real MiniLM
encoder (short sequences, tiny batches): versions appear in the registry and verify,
model-updates announces them, an item-tower refit publishes an `items` version, and
SIGKILL during a publication leaves the registry consistent and loses no example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mekb.broker import free_port
from mekb.registry import Registry
from mekb.settings import Settings
from mekb.topics import create_topics
from tests.integration.helpers import ChildProcess
from tests.integration.streams_helpers import produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def trainer_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    env.update({
        "MEKB_BOOTSTRAP_SERVERS": str(settings.bootstrap_servers),
        "MEKB_BROKER_FLAVOR": "tansu",
        "MEKB_TOPIC_PREFIX": settings.topic_prefix,
        "MEKB_PARTITIONS": str(settings.partitions),
        "MEKB_DATA_DIR": str(settings.data_dir),
        "MEKB_TRAINER_PORT": str(port),
        "MEKB_TRAINER_DIM": "32",
        "MEKB_TRAINER_MAX_TOKENS": "32",
        "MEKB_TRAINER_BATCH_SIZE": "8",
        "MEKB_TRAINER_PUBLISH_EVERY": "40",
        "MEKB_TRAINER_PUBLISH_INTERVAL_S": "0",
        "MEKB_TRAINER_HOLDOUT_FRACTION": "0.2",
        "MEKB_TRAINER_GATE_MIN_EXAMPLES": "5",
        "MEKB_TRAINER_GATE_NEGATIVES": "50",
        # the gate's decisions are unit-tested; here every candidate must get through
        "MEKB_TRAINER_GATE_TOLERANCE": "1.0",
        "MEKB_TRAINER_CHECKPOINT_INTERVAL_S": "2",
        "MEKB_TRAINER_REFIT_INTERVAL_S": "3600",
        "MEKB_LOG_LEVEL": "INFO",
    })
    env.update(extra)
    return env


class Trainer(ChildProcess):
    stop_grace_s = 60.0

    def __init__(self, settings: Settings, log: Path, **extra: str) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "mekb.cli.main", "trainer"],
            env=trainer_env(settings, self.port, **extra),
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_healthy(self, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"trainer exited: {self.tail()}"
            status, body = self.get("/healthz")
            if status == 200:
                return dict(json.loads(body))
            time.sleep(0.3)
        raise AssertionError(f"trainer not healthy: {self.tail()}")

    def metric(self, name: str) -> float:
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


TASTES = {
    "space": (["Apollo program", "NASA", "Mars"], ["s1", "s2", "s3"]),
    "cooking": (["Italian cuisine", "Pasta", "Olive oil"], ["c1", "c2", "c3"]),
}


def examples(start: int, n: int) -> list[tuple[bytes, bytes]]:
    pairs = []
    for i in range(start, start + n):
        titles, items = TASTES["space" if i % 2 else "cooking"]
        user = f"u{i % 11}"
        value = {"v": 1, "example_id": f"ev-{i}", "user_id": user, "ts": 1.7e9 + i,
                 "domain": "action", "item_id": items[i % 3], "mekb_version": i,
                 "entities": [{"id": f"kb:{t}", "title": t, "score": 1.0 / (k + 1)}
                              for k, t in enumerate(titles)]}
        pairs.append((user.encode(), json.dumps(value).encode()))
    return pairs


def wait_for(cond: Any, timeout_s: float, what: str, trainer: Trainer) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        assert trainer.proc.poll() is None, f"trainer exited: {trainer.tail()}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {trainer.tail()}")


def checkpoint_state(settings: Settings) -> dict[str, Any]:
    root = settings.data_dir / "trainer" / "checkpoints"
    name = (root / "LATEST").read_text().strip()
    return dict(json.loads((root / name / "state.json").read_text()))


def committed_offsets(settings: Settings) -> dict[str, int]:
    from kafka import KafkaConsumer, TopicPartition

    from mekb.kafka_config import kafka_python_config

    topic = settings.topic("training-examples")
    consumer = KafkaConsumer(**kafka_python_config(settings), enable_auto_commit=False,
                             group_id=settings.topic("mekb-trainer"))
    try:
        found = {}
        for p in sorted(consumer.partitions_for_topic(topic) or []):
            offset = consumer.committed(TopicPartition(topic, p))
            if offset is not None:
                found[f"{topic}:{p}"] = int(offset)
        return found
    finally:
        consumer.close()


def assert_consistent(registry: Registry) -> None:
    for mv in registry.list():
        registry.verify(mv.version)
    assert registry.active_version() in {mv.version for mv in registry.list()}


@pytest.fixture
def tsettings(settings: Settings) -> Settings:
    create_topics(settings)
    return settings


def kill_when(trainer: Trainer, cond: Any, timeout_s: float = 120.0) -> bool:
    """SIGKILL the trainer the moment `cond()` holds (polled every few ms)."""
    deadline = time.monotonic() + timeout_s
    seen = False
    while time.monotonic() < deadline:
        assert trainer.proc.poll() is None, trainer.tail()
        if cond():
            seen = True
            break
        time.sleep(0.002)
    trainer.kill()
    return seen


def test_trainer_process_publishes_survives_sigkill_and_refits(
    tsettings: Settings, tmp_path: Path
) -> None:
    registry = Registry(tsettings.data_dir / "registry")
    outbox = tsettings.data_dir / "trainer" / "outbox"
    log = tmp_path / "trainer.log"

    # 1. empty registry: an initial version is published and activated before /healthz
    trainer = Trainer(tsettings, log)
    health = trainer.wait_healthy()
    initial = registry.active()
    assert initial is not None and health["active_version"] == initial.version
    assert initial.manifest["gate"]["decision"] == "initial"
    produce(tsettings, "training-examples", examples(0, 60))
    # SIGKILL while the first candidate's bundle is being written (after its checkpoint)
    assert kill_when(trainer, lambda: outbox.is_dir() and any(outbox.iterdir()))
    pending = checkpoint_state(tsettings)["extra"].get("publishing")
    assert pending is not None, "killed before the checkpoint of the publication"
    version = pending["version"]
    assert version not in {v.version for v in registry.list()}
    assert_consistent(registry)
    assert registry.active_version() == initial.version

    # 2. restart: the interrupted publication completes under the same id; SIGKILL again
    # while the next one sits in the registry's staging directory (if we catch it)
    trainer = Trainer(tsettings, log)
    trainer.wait_healthy()
    assert registry.active_version() == version
    produce(tsettings, "training-examples", examples(60, 60))
    staging_seen = kill_when(trainer, lambda: len(registry.list()) >= 3 or any(
        p.name.startswith(".staging-") for p in registry.versions_dir.iterdir()))
    assert_consistent(registry)  # readers never take a staging directory for a version

    # 3. restart with a short refit interval: the rest of the stream, then an items version
    trainer = Trainer(tsettings, log, MEKB_TRAINER_REFIT_INTERVAL_S="3")
    try:
        trainer.wait_healthy()

        def caught_up() -> bool:
            state = checkpoint_state(tsettings)
            return (trainer.metric("mekb_trainer_consumer_lag_records") == 0
                    and not state["extra"].get("publishing")
                    and sum(state["offsets"].values()) == 120)

        wait_for(caught_up, 120, "the rest of the stream", trainer)
        wait_for(lambda: any(v.kind == "items" for v in registry.list()), 90,
                 "an item-tower refit", trainer)
        assert trainer.metric("mekb_trainer_gate_decisions_total") >= 1
        assert trainer.metric("mekb_trainer_item_tower_age_seconds") < 120
        assert "mekb_trainer_active_version_info{" in trainer.get("/metrics")[1]
    finally:
        assert trainer.stop() == 0, trainer.tail()

    assert_consistent(registry)
    assert not any(p.name.startswith(".staging-") for p in registry.versions_dir.iterdir()), \
        f"staging left behind (caught one: {staging_seen})"
    versions = registry.list()
    ids = [v.version for v in versions]
    assert len(ids) == len(set(ids)) and ids.count(version) == 1
    fulls = [v for v in versions if v.kind == "full"]
    assert len(fulls) >= 3 and fulls[1].version == version and fulls[1].parent == initial.version
    assert sum(fulls[1].manifest["training_offsets"].values()) >= 40
    refit = next(v for v in versions if v.kind == "items")
    tower = registry.get(str(refit.parent))
    assert tower.kind == "full"
    assert refit.files["user_tower.onnx"] == tower.files["user_tower.onnx"]
    items = json.loads((refit.path / "items.json").read_text())
    assert {"s1", "s2", "s3", "c1", "c2", "c3"} <= set(items["item_ids"])
    announced = {r.key.decode() for r in read_topic(tsettings, "model-updates")}
    assert set(ids) <= announced
    # no example lost: every offset is in the checkpoint and every example not held out
    # was trained at least once (a replay after SIGKILL may train some twice)
    state = checkpoint_state(tsettings)
    assert sum(state["offsets"].values()) == 120
    assert state["examples_seen"] >= 120 - len(state["extra"]["holdout"])
    # step 4 of the order: the group's committed offsets are the checkpoint's
    assert committed_offsets(tsettings) == state["offsets"]


def produce_one_per_batch(settings: Settings, topic: str,
                          pairs: list[tuple[bytes, bytes]]) -> None:
    """One record per record batch: Tansu's high watermark is right only for those."""
    from kafka import KafkaProducer

    from mekb.kafka_config import kafka_python_config

    producer = KafkaProducer(**kafka_python_config(settings), linger_ms=0)
    for key, value in pairs:
        producer.send(settings.topic(topic), key=key, value=value).get(timeout=10)
    producer.close()


def test_trainer_skips_ahead_when_too_far_behind(tsettings: Settings, tmp_path: Path) -> None:
    # 120 examples wait before the trainer starts; its first poll takes at most 64, so
    # every partition is then far more than 5 behind and must skip to its newest 5.
    produce_one_per_batch(tsettings, "training-examples", examples(0, 120))
    trainer = Trainer(tsettings, tmp_path / "trainer.log", MEKB_TRAINER_MAX_LAG_RECORDS="5",
                      MEKB_TRAINER_PUBLISH_EVERY="100000")
    outcome = 'mekb_trainer_examples_total{{outcome="{}"}}'.format
    try:
        trainer.wait_healthy()

        def counted() -> float:
            return sum(trainer.metric(outcome(o))
                       for o in ("trained", "held_out", "invalid", "skipped"))

        wait_for(lambda: counted() == 120
                 and trainer.metric("mekb_trainer_consumer_lag_records") == 0,
                 180, "every example trained, held out or skipped", trainer)
        skipped = trainer.metric(outcome("skipped"))
        assert 0 < skipped <= 120 - 5 * tsettings.partitions
        assert trainer.metric(outcome("trained")) > 0
        assert "behind: skipped" in trainer.tail()
    finally:
        assert trainer.stop() == 0, trainer.tail()
    # the skip moved the position for good: the checkpoint holds the end of the topic
    assert sum(checkpoint_state(tsettings)["offsets"].values()) == 120
