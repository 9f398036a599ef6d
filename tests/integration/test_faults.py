"""Fault tests of the whole pipeline (real broker, worker, trainer and serving
processes): each process is SIGKILLed in turn during the replay and restarted,
and the broker stops answering for 10 s. Afterwards no valid event is lost and
none is counted twice (serving's MeKBs and the df table equal an independent
reference), serving kept answering throughout, and the registry is consistent.

The embedded broker keeps data in memory, so its outage is simulated by
SIGSTOP/SIGCONT (unreachable for 10 s, data kept) rather than a restart.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from linker.alias_table import AliasTable
from mekb.broker import EmbeddedBroker, free_port
from mekb.registry import Registry
from mekb.settings import Settings
from mekb.topics import create_topics
from streams.synthetic import alias_rows, generate, reference_df
from tests.integration.streams_helpers import Worker, produce, wait_exact
from tests.integration.system_helpers import Process, child_env, http, wait_for
from tests.integration.test_streams_worker import events_pairs, items_pairs, reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Answering:
    """Polls serving in the background; records every failed request."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.replica_stale: list[bool] = []  # flag of every answer, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Answering:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status, body = http("GET", self.url, timeout=5)
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            if status == 200:
                self.ok += 1
                self.replica_stale.append(bool(body["replica_stale"]))
            else:
                self.failures.append(f"{status} {body}")


def test_kill_every_process_and_pause_the_broker(tmp_path: Path) -> None:
    with EmbeddedBroker(free_port(), log_path=tmp_path / "broker.log") as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers, broker_flavor="tansu",
            topic_prefix="faults-", partitions=2, data_dir=tmp_path / "data",
            mekb_max_entities=100_000, target_domains="action",
        )
        create_topics(settings)
        alias = tmp_path / "alias"
        AliasTable.build(alias, alias_rows(120)).close()
        log = generate(n_users=40, n_items=60, n_events=2400, n_entities=120, seed=5,
                       dup_rate=0.10, malformed_rate=0.02, late_rate=0.0)
        ref, ref_df, ref_n = reference(settings, alias, log)
        assert ref_df == reference_df(ref)[0]

        ports = {"trainer": free_port(), "serving": free_port()}
        env = child_env(
            MEKB_BOOTSTRAP_SERVERS=broker.bootstrap_servers, MEKB_BROKER_FLAVOR="tansu",
            MEKB_TOPIC_PREFIX=settings.topic_prefix, MEKB_PARTITIONS=2,
            MEKB_DATA_DIR=settings.data_dir, MEKB_ALIAS_TABLE=alias,
            MEKB_TARGET_DOMAINS="action", MEKB_MEKB_MAX_ENTITIES=100_000,
            MEKB_TRAINER_PORT=ports["trainer"], MEKB_SERVING_PORT=ports["serving"],
            MEKB_TRAINER_MAX_TOKENS=16, MEKB_TRAINER_DIM=32, MEKB_TRAINER_PUBLISH_EVERY=300,
        )
        produce(settings, "items", items_pairs(log.items))
        worker = Worker(settings, alias, "w0", tmp_path / "worker.log")
        trainer = Process("trainer", ["trainer"], env, tmp_path)
        serving = Process("serving", ["serve"], env, tmp_path)
        api = f"http://127.0.0.1:{ports['serving']}"
        try:
            worker.wait_ready()
            trainer.wait_http(f"http://127.0.0.1:{ports['trainer']}/healthz")
            serving.wait_http(f"{api}/readyz", timeout_s=240)  # first model published

            pairs = events_pairs(log)
            quarter = len(pairs) // 4 + 1
            chunks = [pairs[i : i + quarter] for i in range(0, len(pairs), quarter)]
            with Answering(f"{api}/v1/users/u1/embedding") as answering:
                produce(settings, "interactions", chunks[0])
                time.sleep(1.0)
                worker.kill()  # 1. stream worker, mid-stream
                produce(settings, "interactions", chunks[1])
                worker = Worker(settings, alias, "w0", tmp_path / "worker.log")
                worker.wait_ready()

                trainer.kill()  # 2. trainer
                trainer.start()
                serving_answers_before = answering.ok

                produce(settings, "interactions", chunks[2])
                answers_before_pause = len(answering.replica_stale)
                os.kill(broker.pid, signal.SIGSTOP)  # 3. broker unreachable for 10 s
                time.sleep(10)
                during_pause = answering.replica_stale[answers_before_pause:]
                os.kill(broker.pid, signal.SIGCONT)
                assert answering.ok > serving_answers_before, "serving stopped answering"
                assert any(during_pause), "broker down, yet no answer flagged replica_stale"
                wait_for(lambda: answering.replica_stale[-1] is False, 30,
                         "replica_stale to clear once the broker is back")
                failures_before_serving_kill = list(answering.failures)
            assert not failures_before_serving_kill, failures_before_serving_kill[:5]

            serving.kill()  # 4. serving (its RocksDB replica is kept)
            produce(settings, "interactions", chunks[3])
            serving.start()
            serving.wait_http(f"{api}/readyz", timeout_s=180)
            trainer.wait_http(f"http://127.0.0.1:{ports['trainer']}/healthz")

            wait_exact(settings, ref, ref_df, ref_n, timeout_s=120)  # worker state via topics

            def served_exactly() -> bool:  # and through serving's replica
                for user, want in ref.items():
                    status, body = http("GET", f"{api}/v1/users/{user}/mekb")
                    if status != 200:
                        return False
                    got = {e["id"]: e["k"] for e in body["entities"]}
                    if set(got) != set(want) or any(abs(got[e] - want[e]) > 1e-9 for e in want):
                        return False
                return True
            wait_for(served_exactly, 60, "serving's MeKBs to equal the reference")

            registry = Registry(settings.data_dir / "registry")
            versions = registry.list()
            assert versions, "the trainer published nothing"
            for mv in versions:  # a killed publication never shows up as a version
                registry.verify(mv.version)  # sha256 of every file of every version
            assert registry.active_version() in {mv.version for mv in versions}
        finally:
            for proc in (serving, trainer):
                proc.stop()
            worker.stop()

