"""Helpers for integration tests against the real broker."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from kafka import KafkaConsumer

from mekb.kafka_config import kafka_python_config
from mekb.settings import Settings


def consume_all(
    settings: Settings, topic: str, expected: int, *, timeout_s: float = 30.0
) -> list[Any]:
    """Read a topic from the beginning until `expected` records arrived (or time out)."""
    consumer = KafkaConsumer(
        topic, **kafka_python_config(settings), auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None, consumer_timeout_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


class ChildProcess:
    """SIGKILL and graceful stop of the child process a test helper holds in `proc`."""

    proc: subprocess.Popen[bytes]
    stop_grace_s: float = 30.0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after `stop_grace_s`; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

