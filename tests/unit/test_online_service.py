from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from trainer.online.metrics import TrainerMetrics
from trainer.online.service import AlreadyRunning, Health, acquire_lock, at_end, bound_lag


def test_one_trainer_per_registry(tmp_path: Path) -> None:
    path = tmp_path / "registry" / ".trainer.lock"
    lock = acquire_lock(path)
    with pytest.raises(AlreadyRunning, match="another trainer"):
        acquire_lock(path)
    lock.close()  # (a dead process's lock goes with it)
    acquire_lock(path).close()


def test_healthz_is_ok_only_while_running() -> None:
    health = Health()
    status, body = health.response()
    assert status == 503 and json.loads(body)["status"] == "starting"
    health.phase, health.active_version = "running", "v1"
    status, body = health.response()
    assert status == 200 and json.loads(body)["active_version"] == "v1"


class _Consumer:
    def __init__(self, highs: dict[int, int | None]) -> None:
        self.highs = highs
        self.seeks: dict[int, int] = {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highs[tp.partition]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp.partition] = offset


class _Trainer:
    def __init__(self, offsets: dict[str, int]) -> None:
        self.offsets = offsets
        self.metrics = TrainerMetrics(CollectorRegistry())


def _skipped(trainer: _Trainer) -> float:
    return trainer.metrics.examples.labels("skipped")._value.get()


@pytest.mark.parametrize("max_lag", [0, 10])
def test_lag_bound_skips_ahead_only_when_set_and_exceeded(max_lag: int) -> None:
    tps = [TopicPartition("t", p) for p in range(3)]
    consumer = _Consumer({0: 100, 1: 15, 2: None})  # 2: no watermark yet
    trainer = _Trainer({"t:0": 40, "t:1": 10, "t:2": 0})
    lag = bound_lag(consumer, "t", tps, trainer, max_lag)  # type: ignore[arg-type]
    if max_lag == 0:
        assert lag == 60 + 5 and consumer.seeks == {} and _skipped(trainer) == 0
        assert trainer.offsets == {"t:0": 40, "t:1": 10, "t:2": 0}
    else:  # partition 0 is 60 behind: it moves to the newest 10; partition 1 is fine
        assert lag == 10 + 5 and consumer.seeks == {0: 90} and _skipped(trainer) == 50
        assert trainer.offsets == {"t:0": 90, "t:1": 10, "t:2": 0}


def test_at_end_needs_every_watermark_and_every_partition_read_to_it() -> None:
    tps = [TopicPartition("t", p) for p in range(2)]
    trainer = _Trainer({"t:0": 7})
    assert at_end(_Consumer({0: 7, 1: 0}), "t", tps, trainer)  # type: ignore[arg-type]
    assert not at_end(_Consumer({0: 7, 1: None}), "t", tps, trainer)  # type: ignore[arg-type]
    assert not at_end(_Consumer({0: 7, 1: 3}), "t", tps, trainer)  # type: ignore[arg-type]
    assert not at_end(_Consumer({0: 9, 1: 0}), "t", tps, trainer)  # type: ignore[arg-type]
