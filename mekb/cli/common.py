"""Shared CLI helpers: the user-facing error type, settings with flag overrides and the
broker check of every command that talks to the broker."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from mekb.settings import Settings, get_settings

# How long a command waits for the broker's TCP port before giving up (the Kafka
# clients' own bootstrap wait is 30 s, and ends in a traceback).
BROKER_CONNECT_TIMEOUT_S = 5.0
# Long-running services (worker, trainer, monitor) wait longer for a broker that accepts
# the connection but does not answer yet (starting, paused, overloaded): failing there
# turned a 10 s broker pause into a dead trainer. Nothing listening still fails at once.
SERVICE_BROKER_WAIT_S = 60.0


class CliError(Exception):
    """An error the user can fix: printed as one line, exit code 1."""


def settings_with(**overrides: Any) -> Settings:
    """Environment settings with the flags that were given (None = not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    base = get_settings()
    if not given:
        return base
    return Settings(**{**base.model_dump(), **given})


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.strip().rpartition(":")
    if not host:  # no port given: Kafka's default
        return server.strip().strip("[]"), 9092
    return host.strip("[]"), int(port)


# ApiVersions v0 (api key 18), correlation id 0x6d656b62, client id "mekb": the request
# every Kafka client sends first, so any broker answers it before authentication.
_API_VERSIONS = (struct.pack(">hhih", 18, 0, 0x6D656B62, 4) + b"mekb")
_API_VERSIONS = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS


def _kafka_answers(host: str, port: int, deadline: float, plaintext: bool) -> None:
    """Connect; on a plaintext listener also check that a Kafka broker answers there
    (an accepting proxy or another service would otherwise pass). Raises OSError."""
    def left() -> float:
        return max(0.05, deadline - time.monotonic())

    with socket.create_connection((host, port), timeout=left()) as sock:
        if not plaintext:  # TLS first: the connection is what can be checked cheaply
            return
        sock.settimeout(left())
        sock.sendall(_API_VERSIONS)
        reply = b""
        while len(reply) < 8:
            sock.settimeout(left())
            chunk = sock.recv(8 - len(reply))
            if not chunk:
                raise OSError(0, "closed the connection: not a Kafka broker")
            reply += chunk
        if struct.unpack(">i", reply[4:8])[0] != 0x6D656B62:
            raise OSError(0, "answered, but not as a Kafka broker")


def require_broker(settings: Settings, timeout_s: float = BROKER_CONNECT_TIMEOUT_S) -> str:
    """The bootstrap servers, once one of them answers as a Kafka broker; else one
    CliError line within `timeout_s` naming the address and where it came from."""
    from mekb.kafka_config import BrokerNotFound, bootstrap_servers

    try:
        servers = bootstrap_servers(settings)
    except BrokerNotFound as exc:
        raise CliError(str(exc)) from None
    deadline = time.monotonic() + timeout_s
    plaintext = not settings.security_protocol.endswith("SSL")
    problems = []
    for server in servers.split(","):
        try:
            _kafka_answers(*_host_port(server), deadline, plaintext)
            return servers
        except (OSError, ValueError) as exc:
            reason = ("no answer" if isinstance(exc, TimeoutError)
                      else getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            problems.append(f"{server.strip()}: {reason}")
    hint = ("check MEKB_BOOTSTRAP_SERVERS" if settings.bootstrap_servers else
            f"address from {settings.broker_file}: start the broker with `mekb up` or "
            "`mekb broker`")
    raise CliError(f"broker at {servers} unreachable ({'; '.join(problems)}); {hint}")
