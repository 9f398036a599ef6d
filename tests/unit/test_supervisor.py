"""The supervisor of `mekb up`, in-process with tiny real programs: a crashed process is
restarted after a backoff while the others keep running, a crash loop gives up with
an error naming the log, the status file follows every change; `mekb status` with
nothing running is one error line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mekb.supervisor import Component, ComponentFailed, RestartPolicy, Supervisor


def _python(name: str, code: str) -> Component:
    return Component(name, ("-c", code), executable=(sys.executable,))


def _wait(predicate: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _status(path: Path) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(path.read_text())["components"]}


def test_backoff_doubles_up_to_the_cap_and_the_crash_loop_limit_gives_up() -> None:
    policy = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=3.0, max_restarts=5)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]
    assert RestartPolicy(max_restarts=0).delay(1) is None


def test_crash_loop_gives_up_naming_the_log_while_the_others_keep_running(
        tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    sup = Supervisor(tmp_path / "logs", {}, echo=False, status_path=status,
                     policy=RestartPolicy(backoff_initial_s=0.05, backoff_max_s=0.2,
                                          max_restarts=3, window_s=60.0))
    sup.start(_python("steady", "import time; time.sleep(60)"))
    sup.start(_python("crashy", "import sys; print('ValueError: bad config', flush=True); "
                                "sys.exit(3)"))
    try:
        steady_pid = _status(status)["steady"]["pid"]
        failure = _wait(lambda: _status(status)["crashy"]["state"] == "failed")
        assert failure
        with pytest.raises(ComponentFailed) as err:
            sup.check()
        message = str(err.value)
        assert "crashy exited with code 3" in message
        assert "crashed 4 times" in message and "crash-loop limit: 3 restarts" in message
        assert str(tmp_path / "logs" / "crashy.log") in message
        assert message.endswith("(last line: ValueError: bad config)")
        crashy, steady = _status(status)["crashy"], _status(status)["steady"]
        assert crashy["restarts"] == 3 and crashy["pid"] is None
        assert crashy["last_error"] == "exited with code 3: ValueError: bad config"
        assert crashy["log"] == str(tmp_path / "logs" / "crashy.log")
        # four runs, four lines in its log
        assert (tmp_path / "logs" / "crashy.log").read_text().count("bad config") == 4
        assert steady["state"] == "running" and steady["pid"] == steady_pid
        assert steady["restarts"] == 0
    finally:
        sup.stop_all(grace_s=5)
    assert not status.exists()


def test_a_crashed_process_is_restarted_after_its_backoff(tmp_path: Path) -> None:
    marker = tmp_path / "ran-once"
    # the first run dies like a SIGKILL'd process, the second stays up
    code = ("import os, pathlib, signal, time\n"
            f"m = pathlib.Path({str(marker)!r})\n"
            "if not m.exists():\n"
            "    m.touch(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "time.sleep(60)\n")
    status = tmp_path / "status.json"
    sup = Supervisor(tmp_path / "logs", {}, echo=False, status_path=status,
                     policy=RestartPolicy(backoff_initial_s=0.3, max_restarts=2))
    start = time.monotonic()
    sup.start(_python("flaky", code))
    try:
        first = _wait(lambda: marker.exists())
        assert first
        entry = _wait(lambda: (e := _status(status)["flaky"])["restarts"] == 1
                      and e["state"] == "running" and e)
        assert time.monotonic() - start >= 0.3  # waited for the backoff
        assert entry["last_error"] == "killed by SIGKILL"
        sup.check()  # one crash is no crash loop
        pid = entry["pid"]
        assert subprocess.run(["kill", "-0", str(pid)]).returncode == 0
    finally:
        sup.stop_all(grace_s=5)
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_status_without_a_running_system_is_one_error_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MEKB_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "mekb.cli.main", "status"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (f"mekb: error: nothing runs on {tmp_path}: no `mekb up` status "
                             "file (status.json); start the system with `mekb up`\n")
    # a status file left by a `mekb up` that was killed
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / "status.json").write_text(json.dumps(
        {"supervisor_pid": int(gone), "started_at": 0, "components": []}))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"mekb: error: nothing runs on {tmp_path}: `mekb up` (pid "
                                    f"{gone}) is gone")
    assert "Traceback" not in result.stderr


def test_an_adopted_process_is_restarted_by_its_owner_and_left_to_it(tmp_path: Path) -> None:
    """The embedded broker's path: `mekb up` starts it, the supervisor watches it and calls
    back to restart it, and leaves stopping it to its owner."""
    def sleeper() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    started: list[subprocess.Popen[bytes]] = [sleeper()]

    def restart() -> subprocess.Popen[bytes]:
        started.append(sleeper())
        return started[-1]

    status = tmp_path / "status.json"
    sup = Supervisor(tmp_path / "logs", {}, echo=False, status_path=status,
                     policy=RestartPolicy(backoff_initial_s=0.05))
    sup.adopt("broker", started[0], tmp_path / "broker.log", restart)
    try:
        started[0].kill()
        entry = _wait(lambda: (e := _status(status)["broker"])["restarts"] == 1
                      and e["state"] == "running" and e)
        assert len(started) == 2 and entry["pid"] == started[1].pid
        assert entry["last_error"] == "killed by SIGKILL"
    finally:
        sup.stop_all(grace_s=5)
    assert started[1].poll() is None  # its owner stops it
    started[1].kill()
    started[1].wait()


def test_up_hands_its_http_ports_to_the_children(tmp_path: Path) -> None:
    from mekb.cli.up import _resolve_ports, component_env
    from mekb.components import components
    from mekb.settings import Settings

    ports = _resolve_ports({"serving_port": 0, "worker_port": 18001, "trainer_port": None,
                            "monitor_port": None})
    assert ports["serving_port"] not in (0, None) and ports["worker_port"] == 18001
    assert ports["trainer_port"] is None  # not given: the environment's value stays
    given: dict[str, Any] = {k: v for k, v in ports.items() if v is not None}
    settings = Settings(data_dir=tmp_path, **given)
    env = component_env("127.0.0.1:9", tmp_path, {}, settings)
    assert env["MEKB_SERVING_PORT"] == str(ports["serving_port"])
    assert env["MEKB_WORKER_PORT"] == "18001"
    assert env["MEKB_TRAINER_PORT"] == str(settings.trainer_port)
    urls = {c.name: c.health_url for c in components(settings)}
    assert urls["serving"] == f"http://127.0.0.1:{ports['serving_port']}/healthz"
    assert urls["worker"] == "http://127.0.0.1:18001/healthz"


def test_a_second_up_on_a_running_data_dir_is_refused(tmp_path: Path) -> None:
    import os

    from mekb.cli.common import CliError
    from mekb.cli.up import _refuse_second_instance

    path = tmp_path / "status.json"
    _refuse_second_instance(path)  # nothing ran here
    path.write_text(json.dumps({"supervisor_pid": os.getpid(), "components": []}))
    with pytest.raises(CliError, match=r"`mekb up` already runs on .* \(pid \d+\); see `mekb"):
        _refuse_second_instance(path)
