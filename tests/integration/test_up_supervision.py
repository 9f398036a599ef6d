"""Supervision through `mekb up` itself: serving is SIGKILLed under a bounded request
loop; the supervisor names its log, restarts it after the backoff while the broker
and the other processes keep running; requests resume and events produced during the
gap are applied (the user's MeKB equals an independent computation); `mekb status`
shows the restart. No model is needed (the MeKB endpoint reads the replica only), so
the test does not wait for the trainer's first version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mekb.broker import free_port
from tests.integration.system_helpers import (
    child_env,
    default_alias_table,
    http,
    reference_counts,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

GAP_EVENTS = 6


class RequestLoop(threading.Thread):
    """GET a user's MeKB every 50 ms (at most `limit` requests): (time, status) each,
    status None when the connection failed."""

    def __init__(self, url: str, limit: int = 3000) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit
        self.results: list[tuple[float, int | None]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and len(self.results) < self.limit:
            try:
                status = http("GET", self.url, timeout=2)[0]
            except OSError:
                status = None
            self.results.append((time.monotonic(), status))
            self.done.wait(0.05)


def _status(data: Path) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads((data / "status.json").read_text())["components"]}


def test_serving_killed_under_load_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("worker", "trainer", "serving", "monitor")}
    alias = default_alias_table()
    env = child_env(MEKB_DATA_DIR=tmp_path, MEKB_ALIAS_TABLE=alias, MEKB_TRAINER_MAX_TOKENS=16,
                    MEKB_TRAINER_DIM=32, MEKB_SUPERVISOR_BACKOFF_S=0.5)
    lines: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "mekb.cli.main", "up", "--limit", "300", "--rate", "0",
         "--no-prometheus", *(a for n, p in ports.items() for a in (f"--{n}-port", str(p)))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    reader = threading.Thread(target=lambda: lines.extend(
        line.rstrip("\n") for line in proc.stdout), daemon=True)  # type: ignore[union-attr]
    reader.start()
    api = f"http://127.0.0.1:{ports['serving']}"
    loop: RequestLoop | None = None
    try:
        wait_for(lambda: proc.poll() is not None or any(
            "replayed interactions.jsonl" in x for x in lines), 600, "the replay")
        assert proc.poll() is None, "\n".join(lines[-80:])
        with (tmp_path / "sample" / "interactions.jsonl").open() as f:
            user = json.loads(f.readline())["user_id"]  # a replayed user
        loop = RequestLoop(f"{api}/v1/users/{user}/mekb")
        wait_for(lambda: http("GET", loop.url)[0] == 200, 120, f"{user}'s MeKB")
        before = _status(tmp_path)
        assert {n: c["state"] for n, c in before.items()} == dict.fromkeys(
            ("broker", "worker", "trainer", "serving", "monitor"), "running")
        loop.start()
        time.sleep(1.0)

        os.kill(before["serving"]["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        # events of a new user while serving is down, through `mekb produce`
        items = [json.loads(x) for x in (tmp_path / "sample" / "items.jsonl").open()][:GAP_EVENTS]
        gap = tmp_path / "gap.jsonl"
        gap.write_text("".join(json.dumps({
            "event_id": f"gap-{n}", "user_id": "gap-user", "item_id": item["item_id"],
            "domain": item["domain"], "action": "click", "ts": 1_000 + n}) + "\n"
            for n, item in enumerate(items)))
        produced = subprocess.run([sys.executable, "-m", "mekb.cli.main", "produce", str(gap)],
                                  env=child_env(MEKB_DATA_DIR=tmp_path), capture_output=True,
                                  text=True, timeout=120)
        assert produced.returncode == 0, produced.stderr

        after = wait_for(lambda: (s := _status(tmp_path))["serving"]["restarts"] == 1
                         and s["serving"]["state"] == "running" and s, 120, "serving restarted")
        want = reference_counts(tmp_path / "sample" / "items.jsonl", gap, alias)["gap-user"]

        def gap_user_applied() -> dict[str, Any] | None:
            status, body = http("GET", f"{api}/v1/users/gap-user/mekb")
            return body if status == 200 and body["mekb_version"] == GAP_EVENTS else None

        body = wait_for(gap_user_applied, 60, "the gap's events in serving")
        got = {e["id"]: e["k"] for e in body["entities"]}
        assert set(got) == set(want) and all(abs(got[e] - want[e]) < 1e-6 for e in want)
        time.sleep(1.0)
        loop.done.set()
        loop.join(10)

        # the broker and the other processes kept running: same pids, no restart
        for name in ("broker", "worker", "trainer", "monitor"):
            assert after[name]["pid"] == before[name]["pid"], name
            assert after[name]["restarts"] == 0, name
        assert after["serving"]["pid"] != before["serving"]["pid"]
        assert after["serving"]["last_error"].startswith("killed by SIGKILL")
        log = str(tmp_path / "logs" / "serving.log")
        assert any("serving killed by SIGKILL; restarting it in 0.5s" in x and log in x
                   for x in lines), "\n".join(lines[-80:])

        # requests failed during the gap only, then resumed
        down = [t for t, s in loop.results if s != 200]
        assert down and min(down) >= killed_at
        resumed = [t for t, s in loop.results if s == 200 and t > max(down)]
        assert len(resumed) >= 5, loop.results[-20:]
        assert all(s in (200, None) for _, s in loop.results), {s for _, s in loop.results}

        result = subprocess.run([sys.executable, "-m", "mekb.cli.main", "status"],
                                env=child_env(MEKB_DATA_DIR=tmp_path), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        rows = {r.split()[0]: r for r in result.stdout.splitlines()[2:]}
        assert set(rows) == {"broker", "worker", "trainer", "serving", "monitor"}
        cells = rows["serving"].split()
        assert cells[1:4] == ["running", str(after["serving"]["pid"]), "ok"]
        assert cells[5] == "1" and cells[6].isdigit()  # restarts, replica lag
        assert "killed by SIGKILL" in rows["serving"]
        assert rows["worker"].split()[5] == "0" and rows["worker"].split()[6].isdigit()
    finally:
        if loop is not None:
            loop.done.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    reader.join(10)
    assert proc.returncode == 0, "\n".join(lines[-60:])
    assert lines[-1].endswith("stopped")
    assert not (tmp_path / "status.json").exists()
