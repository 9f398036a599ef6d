"""`require_broker`: every command that talks to the broker fails in seconds, in one
line, when nothing (or something that is no Kafka broker) listens at the address."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mekb.broker import free_port
from mekb.cli.common import CliError, require_broker
from mekb.settings import Settings


def _settings(tmp_path: Path, servers: str | None) -> Settings:
    return Settings(bootstrap_servers=servers, data_dir=tmp_path / "data")


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A TCP port that accepts connections and never says anything."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server, accepted
    server.close()
    for conn in accepted:
        conn.close()


def test_nothing_listening_is_one_line_naming_the_address(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(CliError) as info:
        require_broker(_settings(tmp_path, f"127.0.0.1:{port}"))
    assert time.monotonic() - started < 2.0
    message = str(info.value)
    assert message.startswith(f"broker at 127.0.0.1:{port} unreachable (")
    assert "refused" in message and "MEKB_BOOTSTRAP_SERVERS" in message
    assert "\n" not in message


def test_a_stale_broker_file_is_named(tmp_path: Path) -> None:
    settings = _settings(tmp_path, None)
    with pytest.raises(CliError, match="no broker: set MEKB_BOOTSTRAP_SERVERS"):
        require_broker(settings)
    settings.data_dir.mkdir(parents=True)
    settings.broker_file.write_text(f'{{"bootstrap_servers": "127.0.0.1:{free_port()}"}}')
    with pytest.raises(CliError, match=f"address from {settings.broker_file}: start"):
        require_broker(settings)


def test_a_silent_listener_fails_within_the_timeout(
    tmp_path: Path, listener: tuple[socket.socket, list[socket.socket]]
) -> None:
    port = listener[0].getsockname()[1]
    started = time.monotonic()
    with pytest.raises(CliError, match=f"127.0.0.1:{port}: no answer"):
        require_broker(_settings(tmp_path, f"127.0.0.1:{port}"), timeout_s=0.5)
    assert time.monotonic() - started < 2.0


def test_the_first_server_that_answers_wins(
    tmp_path: Path, listener: tuple[socket.socket, list[socket.socket]]
) -> None:
    from mekb.cli import common

    port = listener[0].getsockname()[1]
    answered: list[bytes] = []

    def reply() -> None:  # answer the ApiVersions request with its correlation id
        deadline = time.monotonic() + 5
        while not listener[1] and time.monotonic() < deadline:
            time.sleep(0.01)
        conn = listener[1][0]
        request = conn.recv(64)
        answered.append(request)
        conn.sendall(b"\x00\x00\x00\x06" + request[8:12] + b"\x00\x00")

    thread = threading.Thread(target=reply, daemon=True)
    thread.start()
    servers = f"127.0.0.1:{free_port()},127.0.0.1:{port}"
    assert require_broker(_settings(tmp_path, servers), timeout_s=3.0) == servers
    thread.join(5)
    assert answered == [common._API_VERSIONS]
