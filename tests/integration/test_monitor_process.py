"""`mekb monitor` as a real process: reads mekb-updates from the broker, exports drift."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from kafka import KafkaProducer

from mekb.broker import free_port
from mekb.kafka_config import kafka_python_config
from mekb.settings import Settings
from mekb.topics import create_topics

pytestmark = pytest.mark.integration


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return resp.read().decode()


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_monitor_exports_entity_drift(settings: Settings) -> None:
    create_topics(settings)
    port = free_port()
    env = {
        **os.environ, "MEKB_BOOTSTRAP_SERVERS": settings.bootstrap_servers or "",
        "MEKB_BROKER_FLAVOR": "tansu", "MEKB_TOPIC_PREFIX": settings.topic_prefix,
        "MEKB_DATA_DIR": str(settings.data_dir),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mekb.cli.main", "monitor", "--port", str(port), "--window", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _scrape(port)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        time.sleep(4)  # the consumer starts at `latest`: let it join before producing
        producer = KafkaProducer(**kafka_python_config(settings))
        plan = [(0, "kb:A"), (30, "kb:A"), (70, "kb:A"), (100, "kb:A"), (130, "kb:B"),
                (150, "kb:B"), (200, "kb:C"), (250, "kb:C")]
        for n, (ts, entity) in enumerate(plan):
            record = {"v": 1, "user_id": f"u{n}", "version": 1, "ts": ts,
                      "entities": [{"id": entity, "title": entity[3:], "k": 1, "score": 1}]}
            producer.send(settings.topic("mekb-updates"), key=f"u{n}".encode(),
                          value=json.dumps(record).encode())
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = _scrape(port)
            if _gauge(text, "mekb_drift_windows_total") == 2:
                break
            time.sleep(0.3)
        # windows: [0,60) {A}, [60,120) {A}, [120,180) {B}: A->A stable, A->B disjoint;
        # the last record's watermark (250 - 60) closes the first three windows.
        assert _gauge(text, "mekb_drift_windows_total") == 2
        assert _gauge(text, "mekb_drift_entity_js_divergence") == pytest.approx(1.0)
        assert _gauge(text, "mekb_drift_mekb_updates_total") == 8
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
