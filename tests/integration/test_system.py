"""The whole system through the README's main command, `mekb up`, as real processes:
replay -> MeKB updated -> training examples -> model published -> embeddings served.

Checks: a user's embedding comes back with its model version; the user's MeKB
served over HTTP equals an independent computation from the replayed sample; a new
event reaches the user's embedding within seconds; every process's /metrics
carries exactly the catalogue (docs/metrics.md); Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from mekb.broker import free_port
from monitoring.catalogue import conformance, load_catalogue
from tests.integration.system_helpers import (
    child_env,
    default_alias_table,
    http,
    metrics_text,
    reference_counts,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT = 4000  # ratings replayed (time-ordered prefix of MovieLens-100k)


class Up:
    """`mekb up` as a child process, its output collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mekb.cli.main", "up", "--limit", str(LIMIT), "--rate", "0",
             "--no-prometheus", "--ready-timeout", "600"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"no {text!r} from mekb up:\n{self.output[-6000:]}")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("system")
    ports = {name: free_port() for name in ("worker", "trainer", "serving", "monitor")}
    alias = default_alias_table()
    env = child_env(
        MEKB_DATA_DIR=data, MEKB_ALIAS_TABLE=alias,
        MEKB_WORKER_PORT=ports["worker"], MEKB_TRAINER_PORT=ports["trainer"],
        MEKB_SERVING_PORT=ports["serving"], MEKB_MONITOR_PORT=ports["monitor"],
        # small and quick on 2 CPU cores: short sequences, frequent publication
        MEKB_TRAINER_MAX_TOKENS=32, MEKB_TRAINER_DIM=64, MEKB_TRAINER_PUBLISH_EVERY=200,
        MEKB_TRAINER_PUBLISH_INTERVAL_S=30, MEKB_DRIFT_WINDOW_S=86400,
    )
    up = Up(env)
    try:
        up.wait_line("MeKB-Stream is up", timeout_s=900)
        yield up, ports, data, alias
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
            try:
                up.proc.wait(90)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()


def test_embedding_of_a_replayed_user_comes_with_its_model_version(system) -> None:  # type: ignore[no-untyped-def]
    up, ports, _, _ = system
    api = f"http://127.0.0.1:{ports['serving']}"
    assert "replayed interactions.jsonl: sent" in up.output
    status, body = http("GET", f"{api}/v1/users/u1/embedding")
    assert status == 200, body
    assert body["model_version"] and body["cold_start"] is False
    assert len(body["embedding"]) == body["dim"] == 64
    assert any(abs(x) > 0 for x in body["embedding"])
    status, models = http("GET", f"{api}/v1/models")
    assert status == 200 and body["model_version"] in json.dumps(models)


def test_served_mekb_equals_independent_computation(system) -> None:  # type: ignore[no-untyped-def]
    _, ports, data, alias = system
    api = f"http://127.0.0.1:{ports['serving']}"
    ref = reference_counts(data / "sample" / "items.jsonl",
                           data / "sample" / "interactions.jsonl", alias)
    # users whose MeKB fits the top-M bound (no eviction), several of them
    users = sorted((u for u, ks in ref.items() if 3 <= len(ks) <= 100), key=len)[:15]
    assert len(users) >= 5
    for user in users:
        def matches(user: str = user) -> bool:
            status, body = http("GET", f"{api}/v1/users/{user}/mekb")
            if status != 200:
                return False
            got = {e["id"]: e["k"] for e in body["entities"]}
            want = ref[user]
            return set(got) == set(want) and all(abs(got[e] - want[e]) < 1e-6 for e in want)
        wait_for(matches, 60, f"MeKB of {user} to equal the reference")


def test_a_new_event_reaches_the_users_embedding_quickly(system) -> None:  # type: ignore[no-untyped-def]
    _, ports, data, _ = system
    api = f"http://127.0.0.1:{ports['serving']}"
    _, before = http("GET", f"{api}/v1/users/u1/embedding")
    event = {"event_id": f"fresh-{time.time()}", "user_id": "u1", "item_id": "50",
             "domain": "action", "action": "click", "ts": time.time()}
    path = data / "fresh.jsonl"
    path.write_text(json.dumps(event) + "\n")
    sent = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "produce", str(path)],
        env=child_env(MEKB_DATA_DIR=data), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr

    def updated() -> dict | None:  # type: ignore[type-arg]
        status, body = http("GET", f"{api}/v1/users/u1/embedding")
        return body if status == 200 and body["mekb_version"] > before["mekb_version"] else None

    after = wait_for(updated, 30, "u1's embedding to reflect the new event", 0.1)
    lag = time.monotonic() - sent
    assert after["stale"] is False
    assert after["embedding"] != before["embedding"]
    assert lag < 15, f"new event took {lag:.1f}s to reach the embedding"


@pytest.mark.parametrize("process", ["worker", "trainer", "serving", "monitor"])
def test_metrics_of_every_process_match_the_catalogue(system, process: str) -> None:  # type: ignore[no-untyped-def]
    _, ports, _, _ = system
    text = metrics_text(f"http://127.0.0.1:{ports[process]}/metrics")
    problems = conformance(process, text, load_catalogue())
    assert not problems, "\n".join(problems)


def test_ctrl_c_stops_everything_cleanly(system) -> None:  # type: ignore[no-untyped-def]
    up, ports, data, _ = system
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(90) == 0, up.output[-4000:]
    assert "stopped" in up.lines[-1]
    assert not (data / "broker.json").exists()
    for port in ports.values():
        with pytest.raises(OSError):
            metrics_text(f"http://127.0.0.1:{port}/metrics")
