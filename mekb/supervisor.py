"""Runs the component processes of `mekb up`: one log file each, health checks,
restarts of a crashed process with exponential backoff up to a crash-loop limit, a
status file for `mekb status`, clean shutdown (SIGTERM, then SIGKILL after a grace).

A monitor thread watches every process. A process that exits while it should run is
a crash: its exit code and the last line of its log are recorded, and it is started
again after `RestartPolicy.delay` while the others keep running. More crashes than
`max_restarts` within `window_s` is a crash loop: the supervisor gives up and
`check()` raises ComponentFailed in the caller's thread (naming the log).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mekb.children import die_with_parent

logger = logging.getLogger(__name__)

STATUS_VERSION = 1
TICK_S = 0.25
LOG_TAIL_BYTES = 4096
LIVE = ("starting", "running")


@dataclass(frozen=True)
class Component:
    """A process of the system. `argv` are `mekb` sub-command arguments."""

    name: str
    argv: tuple[str, ...]
    health_url: str | None = None  # GET must answer 200 once the component is up
    env: dict[str, str] = field(default_factory=dict)
    executable: tuple[str, ...] | None = None  # a non-mekb program (e.g. prometheus)
    metrics_url: str | None = None  # Prometheus text, read by `mekb status`

    def command(self) -> list[str]:
        if self.executable is not None:
            return [*self.executable, *self.argv]
        return [sys.executable, "-m", "mekb.cli.main", *self.argv]


class ComponentFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts, and the crash-loop limit.

    The n-th crash within the last `window_s` waits `backoff_initial_s * 2**(n-1)`
    (at most `backoff_max_s`) before the restart; the (max_restarts + 1)-th crash within
    the window gives up. `max_restarts = 0` never restarts (a crash stops everything)."""

    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_restarts: int = 5
    window_s: float = 600.0

    def delay(self, recent_crashes: int) -> float | None:
        """Seconds before the restart after `recent_crashes` (>= 1) crashes within the
        window, or None: crash loop, give up."""
        if recent_crashes > self.max_restarts:
            return None
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** (recent_crashes - 1)))


def log_tail(path: Path) -> str:
    """The last non-blank line of a log file (usually the exception that ended the
    process), or '' when there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:300]
    return ""


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


def _pump(name: str, src: IO[bytes], log: IO[bytes], echo: bool) -> None:
    """Copy a child's output into its log file and, prefixed, to our stdout."""
    prefix = f"[{name}] ".encode()
    for line in iter(src.readline, b""):
        log.write(line)
        log.flush()
        if echo:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()
    log.close()


class _Unit:
    """One supervised process and its history (guarded by the supervisor's lock)."""

    def __init__(self, name: str, log_path: Path, spawn: Callable[[], subprocess.Popen[bytes]],
                 health_url: str | None, metrics_url: str | None, *, owned: bool) -> None:
        self.name, self.log_path, self.spawn = name, log_path, spawn
        self.health_url, self.metrics_url = health_url, metrics_url
        self.owned = owned  # stopped by stop_all (the broker is stopped by its owner)
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "starting"  # starting | running | backoff | failed | stopped
        self.started_at = 0.0  # wall time of the current process
        self.restarts = 0
        self.crashes: deque[float] = deque()  # monotonic times within the window
        self.restart_at = 0.0  # monotonic
        self.exit_code: int | None = None
        self.last_error = ""
        self.last_error_at: float | None = None

    def began(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.started_at = proc, time.time()
        self.state = "starting" if self.health_url else "running"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state,
            "pid": self.proc.pid if self.proc is not None and self.state in LIVE else None,
            "started_at": self.started_at, "restarts": self.restarts,
            "exit_code": self.exit_code, "last_error": self.last_error or None,
            "last_error_at": self.last_error_at, "log": str(self.log_path),
            "health_url": self.health_url, "metrics_url": self.metrics_url,
        }


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str], *, echo: bool = True,
                 policy: RestartPolicy | None = None, status_path: Path | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.log_dir = log_dir
        self.env = env
        self.echo = echo
        self.policy = policy or RestartPolicy()
        self.status_path = status_path
        self.info = dict(info or {})  # extra fields of the status file (broker address...)
        self._units: list[_Unit] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._failure: ComponentFailed | None = None
        self._started_at = time.time()
        self._pumps: dict[int, threading.Thread] = {}  # pid -> thread copying its output

    # --- starting ----------------------------------------------------------------
    def start(self, comp: Component) -> None:
        """Start `comp` now and keep it running from then on."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{comp.name}.log"

        def spawn() -> subprocess.Popen[bytes]:
            log = open(log_path, "ab")  # noqa: SIM115 - closed by the pump at EOF
            proc = subprocess.Popen(
                comp.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, **comp.env}, start_new_session=True,
                preexec_fn=die_with_parent,
            )
            assert proc.stdout is not None
            pump = threading.Thread(target=_pump, args=(comp.name, proc.stdout, log, self.echo),
                                    daemon=True)
            pump.start()
            self._pumps[proc.pid] = pump
            logger.info("started %s (pid %d): %s", comp.name, proc.pid, " ".join(comp.command()))
            return proc

        self._add(_Unit(comp.name, log_path, spawn, comp.health_url, comp.metrics_url,
                        owned=True))

    def adopt(self, name: str, proc: subprocess.Popen[bytes], log_path: Path,
              restart: Callable[[], subprocess.Popen[bytes]]) -> None:
        """Watch a process started by someone else (the embedded broker): restarted by
        `restart()` when it crashes, but stopped by its owner, not by stop_all."""
        unit = _Unit(name, log_path, restart, None, None, owned=False)
        unit.began(proc)
        with self._lock:
            self._units.append(unit)
            self._write_status()
        self._ensure_monitor()

    def _add(self, unit: _Unit) -> None:
        proc = unit.spawn()
        with self._lock:
            unit.began(proc)
            self._units.append(unit)
            self._write_status()
        self._ensure_monitor()

    def _ensure_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="supervisor",
                                             daemon=True)
            self._monitor.start()

    # --- the caller's view -----------------------------------------------------
    def check(self) -> None:
        """Raise ComponentFailed once a component hit the crash-loop limit."""
        if self._failure is not None:
            raise self._failure

    def wait_healthy(self, timeout_s: float = 120.0, stop: threading.Event | None = None) -> None:
        """Wait until every component with a health URL has answered 200 (a component
        that crashes meanwhile is restarted and waited for again)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            with self._lock:
                waiting = [u for u in self._units if u.state != "running"]
            if not waiting or (stop is not None and stop.is_set()):
                return
            if time.monotonic() > deadline:
                u = waiting[0]
                raise ComponentFailed(f"{u.name} not healthy after {timeout_s:.0f}s "
                                      f"(state {u.state}; log: {u.log_path})")
            time.sleep(TICK_S)

    # --- the monitor thread --------------------------------------------------------
    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # the watcher must outlive anything one tick throws
                logger.exception("supervisor tick failed")
            self._stopping.wait(TICK_S)

    def _tick(self) -> None:
        now = time.monotonic()
        for unit in list(self._units):
            if self._stopping.is_set():
                return
            if unit.state in LIVE:
                assert unit.proc is not None
                if unit.proc.poll() is not None:
                    self._crashed(unit, unit.proc.returncode, now)
                elif unit.state == "starting" and _answers_200(unit.health_url):
                    logger.info("%s healthy at %s", unit.name, unit.health_url)
                    with self._lock:
                        unit.state = "running"
                        self._write_status()
            elif unit.state == "backoff" and now >= unit.restart_at:
                self._restart(unit)

    def _crashed(self, unit: _Unit, code: int | None, now: float,
                 reason: str | None = None) -> None:
        pump = self._pumps.pop(unit.proc.pid, None) if unit.proc is not None else None
        if pump is not None:
            pump.join(2.0)  # its last lines (the error) reach the log first
        # A process that exits by itself usually logs why last; a killed one cannot.
        tail = log_tail(unit.log_path) if code is None or code > 0 else ""
        what = reason or _exit_text(code)
        with self._lock:
            unit.exit_code = code
            unit.last_error = f"{what}: {tail}" if tail else what
            unit.last_error_at = time.time()
            unit.crashes.append(now)
            while unit.crashes and unit.crashes[0] < now - self.policy.window_s:
                unit.crashes.popleft()
            delay = self.policy.delay(len(unit.crashes))
            if delay is None:
                unit.state = "failed"
                self._failure = ComponentFailed(
                    f"{unit.name} {what} and crashed {len(unit.crashes)} times within "
                    f"{self.policy.window_s:.0f}s (crash-loop limit: "
                    f"{self.policy.max_restarts} restarts): gave up; log: {unit.log_path}"
                    + (f" (last line: {tail})" if tail else ""))
                logger.error("%s", self._failure)
            else:
                unit.state, unit.restart_at = "backoff", now + delay
                logger.error("%s %s; restarting it in %.1fs (restart %d); log: %s%s", unit.name,
                             what, delay, unit.restarts + 1, unit.log_path,
                             f" (last line: {tail})" if tail else "")
            self._write_status()

    def _restart(self, unit: _Unit) -> None:
        try:
            proc = unit.spawn()  # outside the lock: the broker takes seconds to be ready
        except Exception as exc:  # a failed start counts as a crash
            self._crashed(unit, None, time.monotonic(), reason=f"restart failed: {exc}")
            return
        with self._lock:
            unit.restarts += 1
            unit.began(proc)
            self._write_status()
        logger.warning("restarted %s (pid %d, restart %d)", unit.name, proc.pid, unit.restarts)

    # --- status file ---------------------------------------------------------------
    def _write_status(self) -> None:
        """Atomically replace the status file (called under the lock on every change)."""
        if self.status_path is None:
            return
        body = {
            "v": STATUS_VERSION, "supervisor_pid": os.getpid(), "started_at": self._started_at,
            "updated_at": time.time(), "log_dir": str(self.log_dir),
            "policy": {"max_restarts": self.policy.max_restarts,
                       "window_s": self.policy.window_s,
                       "backoff_initial_s": self.policy.backoff_initial_s,
                       "backoff_max_s": self.policy.backoff_max_s},
            **self.info, "components": [u.describe() for u in self._units],
        }
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
            tmp.replace(self.status_path)
        except OSError as exc:  # status is informative; never let it stop supervision
            logger.warning("cannot write %s: %s", self.status_path, exc)

    # --- stopping ----------------------------------------------------------------------
    def stop_all(self, grace_s: float = 30.0) -> None:
        """Stop watching, SIGTERM every owned process (reverse start order), SIGKILL what
        outlives the grace, remove the status file."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
        with self._lock:
            owned = [u for u in reversed(self._units) if u.owned and u.proc is not None]
            for unit in owned:
                if unit.proc is not None and unit.proc.poll() is None:
                    unit.proc.send_signal(signal.SIGTERM)
                unit.state = "stopped"
            self._write_status()
        deadline = time.monotonic() + grace_s
        for unit in owned:
            assert unit.proc is not None
            try:
                unit.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs: killing", unit.name, grace_s)
                unit.proc.kill()
                unit.proc.wait()
        with self._lock:
            self._units.clear()
        if self.status_path is not None:
            self.status_path.unlink(missing_ok=True)


def _answers_200(url: str | None) -> bool:
    if url is None:
        return True
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
