"""streams/faust_app.py without a broker: what `install` adds to a Faust app, what it
refuses, and that a batch's events are acked (so committed by Faust) only up to the
offset the worker made durable. The agents' real path is in
tests/integration/test_faust_app.py and the runtime-parametrised streams tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mekb.settings import Settings
from streams.faust_app import _Acks, install
from streams.state.memory import MemoryStore


def _app(name: str, tmp_path: Path) -> Any:
    import faust

    return faust.App(name, broker="kafka://127.0.0.1:1", web_enabled=False,
                     datadir=str(tmp_path / "faust"))


def test_install_adds_both_agents_and_the_rebalance_hooks(tmp_path: Path) -> None:
    from linker.alias_table import AliasTable
    from linker.factory import build_linker
    from streams.synthetic import alias_rows

    AliasTable.build(tmp_path / "alias", alias_rows(10)).close()
    settings = Settings(topic_prefix="p-", data_dir=tmp_path, alias_table=tmp_path / "alias")
    app = _app("platform", tmp_path)
    linker = build_linker(settings)
    try:
        agents = install(app, settings, linker=linker, store=MemoryStore())
        topics = {t for agent in app.agents.values() for t in agent.channel.topics}
        assert topics == {"p-items", "p-interactions"}
        assert agents.health()[0] == 503  # not started: not ready
        for signal in (app.on_partitions_assigned, app.on_partitions_revoked,
                       app.on_before_shutdown):
            assert len(list(signal.iter_receivers(app))) == 1
    finally:
        linker.close()


def test_install_refuses_exactly_once(tmp_path: Path) -> None:
    settings = Settings(exactly_once=True, broker_flavor="kafka", data_dir=tmp_path)
    with pytest.raises(ValueError, match="at-least-once"):
        install(_app("eos", tmp_path), settings, store=MemoryStore(), linker=object())  # type: ignore[arg-type]


def test_only_events_below_the_durable_offset_are_acked() -> None:
    from aiokafka import TopicPartition
    from faust.types import TP

    acked: list[tuple[int, int]] = []

    class Stream:
        async def ack(self, event: Any) -> bool:
            acked.append((event.message.tp.partition, event.message.offset))
            return True

    def event(p: int, offset: int) -> Any:
        return SimpleNamespace(message=SimpleNamespace(tp=TP("interactions", p), offset=offset))

    acks = _Acks(app=None)
    acks.stream = Stream()
    acks.hold([event(0, o) for o in range(5)] + [event(1, o) for o in range(3)])
    # The worker commits aiokafka TopicPartitions; Faust's events carry its TPs (equal tuples).
    asyncio.run(acks.commit({TopicPartition("interactions", 0): 3}))  # p0 durable to 2
    assert acked == [(0, 0), (0, 1), (0, 2)]
    asyncio.run(acks.commit({TopicPartition("interactions", 0): 5,
                             TopicPartition("interactions", 1): 3}))
    assert sorted(acked) == [(0, o) for o in range(5)] + [(1, o) for o in range(3)]


def test_unknown_runtime_is_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "worker", "--runtime", "kafka-streams"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "MEKB_DATA_DIR": "/nonexistent-mekb"},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mekb: error: --runtime"), result.stderr


def test_a_batch_that_cannot_be_made_durable_crashes_the_app_unacked(tmp_path: Path) -> None:
    """As the default worker stops: the partition state in memory is ahead of what is
    durable, so Faust must not restart the agent over it in the same process."""
    from faust.types import TP

    from streams.faust_app import MeKBAgents
    from streams.worker import Health

    crashed: list[BaseException] = []
    acked: list[Any] = []

    class App:
        consumer = SimpleNamespace(assignment=lambda: {TP("interactions", 0)})

        async def crash(self, exc: BaseException) -> None:
            crashed.append(exc)

    class Worker:
        health = Health()
        partitions = {0: SimpleNamespace(parked_count=0)}

        async def tables_ready(self) -> None:
            return None

        async def _step(self, got: Any, acks: Any, topic: str) -> None:
            raise RuntimeError("changelog not acknowledged")

    class Stream:
        async def noack_take(self, max_: int, within: float) -> Any:
            yield [SimpleNamespace(message=SimpleNamespace(tp=TP("interactions", 0), offset=0,
                                                           key=b"u1", value=b"{}"))]
            await asyncio.sleep(3600)  # no more records

        async def ack(self, event: Any) -> bool:
            acked.append(event)
            return True

    agents = MeKBAgents(App(), Settings(data_dir=tmp_path), Worker(), [])  # type: ignore[arg-type]
    agents._started = True

    async def scenario() -> None:
        agent = asyncio.create_task(agents.mekb_agent(Stream()))
        for _ in range(200):  # no further records come: the failure alone must crash it
            if crashed:
                break
            await asyncio.sleep(0.05)
        agent.cancel()  # (the crashing app stops its agents)

    asyncio.run(scenario())
    assert [str(e) for e in crashed] == ["changelog not acknowledged"]
    assert acked == []  # Faust commits nothing of it: the restarted process replays it
    assert not agents.worker.health.ready and "changelog" in str(agents.worker.health.error)
