from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mekb.broker import EmbeddedBroker, free_port
from mekb.topics import TOPICS, create_topics

pytestmark = pytest.mark.integration


def _listening_sockets() -> list[tuple[str, int]]:
    """(address, port) of every TCP listener, from /proc (IPv4 and IPv6)."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(name)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            found.append((addr_hex, int(port_hex, 16)))
    return found


def test_broker_listens_on_loopback_only(broker: EmbeddedBroker) -> None:
    mine = [addr for addr, port in _listening_sockets() if port == broker.port]
    assert mine, "broker is not listening"
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; nothing else may be bound.
    assert set(mine) == {"0100007F"}, mine


def test_broker_start_stop_frees_port() -> None:
    port = free_port()
    with EmbeddedBroker(port) as running, socket.create_connection(
        ("127.0.0.1", running.port), timeout=2
    ):
        pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_create_topics_is_idempotent(settings) -> None:  # type: ignore[no-untyped-def]
    from kafka.admin import KafkaAdminClient

    from mekb.kafka_config import kafka_python_config

    first = create_topics(settings)
    assert sorted(first) == sorted(settings.topic(t.name) for t in TOPICS)
    assert create_topics(settings) == []
    admin = KafkaAdminClient(**kafka_python_config(settings))
    try:
        meta = {t["name"]: t for t in admin.describe_topics(first)}
        assert all(len(meta[name]["partitions"]) == settings.partitions for name in first)
    finally:
        admin.close()


def test_broker_runs_in_its_own_session(broker: EmbeddedBroker) -> None:
    """A terminal's Ctrl-C (SIGINT to the foreground process group) must reach only the
    broker's owner, which stops its clients first and the broker last (`mekb up`)."""
    import os

    assert broker.pid is not None
    assert os.getsid(broker.pid) == broker.pid != os.getsid(0)
