"""Rate limit of the Kafka client libraries' log records (mekb/logs.py)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from mekb.logs import RateLimitFilter, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_line_per_interval_with_the_count() -> None:
    clock = Clock()
    limit = RateLimitFilter(("kafka", "aiokafka"), 30.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    passed = []
    for n in range(1000):  # 1000 failures within 10 s
        clock.now = 1000.0 + n * 0.01
        rec = _record("aiokafka.conn", template, n % 3, "Connect call failed")
        if limit.filter(rec):
            passed.append(rec)
    assert len(passed) == 1 and passed[0].getMessage().startswith("Unable connect")
    clock.now = 1031.0  # the next interval: one line, with what was suppressed
    rec = _record("aiokafka.conn", template, 1, "Connect call failed")
    assert limit.filter(rec)
    assert rec.getMessage() == ("Unable connect to node with id 1: Connect call failed "
                                "[999 more like this suppressed in the last 31s]")
    clock.now = 1032.0
    assert not limit.filter(_record("aiokafka.conn", template, 1, "x"))


def test_keys_levels_and_other_loggers_are_independent() -> None:
    clock = Clock()
    limit = RateLimitFilter(("kafka", "aiokafka"), 30.0, clock=clock)
    assert limit.filter(_record("aiokafka.client", "Unable to update metadata from %s", 0))
    # another template, another level, another client logger: each passes once
    assert limit.filter(_record("aiokafka.client", "Unable connect to node %s", 0))
    assert limit.filter(_record("aiokafka.client", "Unable to update metadata from %s", 0,
                                level=logging.WARNING))
    assert limit.filter(_record("kafka.conn", "Unable to update metadata from %s", 0))
    assert not limit.filter(_record("aiokafka.client", "Unable to update metadata from %s", 1))
    # the project's own loggers and look-alike names are never limited
    for _ in range(5):
        assert limit.filter(_record("serving.updates", "follower failed %s", 1))
        assert limit.filter(_record("kafkaesque", "not a client %s", 1))


def test_the_key_table_is_bounded() -> None:
    clock = Clock()
    limit = RateLimitFilter(("aiokafka",), 30.0, clock=clock, max_keys=8)
    for n in range(100):  # f-string messages: a new template every time
        assert limit.filter(_record("aiokafka", f"error {n}"))
    assert len(limit._windows) == 8


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_limits_client_errors_only(restore_logging: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    configure_logging("INFO", client_interval_s=60.0)
    for n in range(500):
        logging.getLogger("aiokafka.conn").error("Unable connect to node with id %s", n)
        logging.getLogger("kafka.client").warning("Node %s connection failed", n)
    for n in range(3):
        logging.getLogger("streams.worker").error("own error %d", n)
    lines = err.getvalue().splitlines()
    assert sum("Unable connect" in x for x in lines) == 1
    assert sum("connection failed" in x for x in lines) == 1
    assert sum("own error" in x for x in lines) == 3
