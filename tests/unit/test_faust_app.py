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
