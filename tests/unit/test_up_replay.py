"""`mekb up`'s wait for the stream worker to apply the replayed ratings
(mekb/cli/up_replay.py), against a real HTTP /healthz whose `applied` offsets the test
moves: it returns once they reach the replay's ends, gives up when they stop moving,
and a stop leaves only the grace period. (The whole path, with a real worker and
broker: tests/integration/test_restart_incarnation.py.)"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mekb.cli import up_replay
from mekb.settings import Settings


class FakeWorker:
    """A /healthz answering `applied` as the test sets it."""

    def __init__(self) -> None:
        self.applied: dict[str, Any] = {}
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = json.dumps({"status": "ok", "applied": worker.applied}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, topic_id: str, **offsets: int) -> None:
        self.applied = {p.removeprefix("p"): {"topic_id": topic_id, "next_offset": n}
                        for p, n in offsets.items()}


class Supervisor:
    checks = 0

    def check(self) -> None:
        self.checks += 1


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker()
    yield w
    w.server.shutdown()


def wait(worker: FakeWorker, stop: threading.Event, ends: dict[int, int]) -> dict[int, int]:
    settings = Settings(worker_port=worker.port)
    return up_replay._wait_applied(settings, Supervisor(), stop, "T1", ends)  # type: ignore[arg-type]


def test_returns_once_every_partition_reaches_the_replays_end(worker: FakeWorker) -> None:
    worker.set("T1", p0=3, p1=0)
    threading.Timer(0.5, worker.set, ("T1",), {"p0": 5, "p1": 7}).start()
    started = time.monotonic()
    assert wait(worker, threading.Event(), {0: 5, 1: 7}) == {0: 5, 1: 7}
    assert 0.4 < time.monotonic() - started < 5


def test_offsets_counted_in_another_topic_do_not_count(worker: FakeWorker,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up_replay, "APPLY_STALL_S", 0.6)
    worker.set("OLD", p0=99)  # an earlier incarnation of interactions
    assert wait(worker, threading.Event(), {0: 5}) == {}


def test_gives_up_when_the_offsets_stop_moving(worker: FakeWorker,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(up_replay, "APPLY_STALL_S", 0.6)
    worker.set("T1", p0=4)
    started = time.monotonic()
    assert wait(worker, threading.Event(), {0: 5}) == {0: 4}
    assert 0.5 < time.monotonic() - started < 5
    assert "has not applied 1 replayed ratings" in capsys.readouterr().err


def test_a_stop_waits_only_the_grace_period(worker: FakeWorker,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(up_replay, "STOP_GRACE_S", 0.6)
    stop = threading.Event()
    stop.set()
    # still moving (the stall timeout alone would keep waiting), but stopping
    moving = threading.Event()

    def advance() -> None:
        n = 0
        while not moving.is_set():
            n += 1
            worker.set("T1", p0=n)
            time.sleep(0.05)

    threading.Thread(target=advance, daemon=True).start()
    try:
        started = time.monotonic()
        got = wait(worker, stop, {0: 10**9})
        assert 0.5 < time.monotonic() - started < 5 and 0 < got[0] < 10**9
    finally:
        moving.set()
    out = capsys.readouterr()
    assert "stopping: waiting up to 1s" in out.out and "not waiting longer" in out.err
