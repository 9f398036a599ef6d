"""Runs the component processes of `mekb up`: one log stream each, health checks,
clean shutdown (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Component:
    """A process of the system. `argv` are `mekb` sub-command arguments."""

    name: str
    argv: tuple[str, ...]
    health_url: str | None = None  # GET must answer 200 once the component is up
    env: dict[str, str] = field(default_factory=dict)
    executable: tuple[str, ...] | None = None  # a non-mekb program (e.g. prometheus)

    def command(self) -> list[str]:
        if self.executable is not None:
            return [*self.executable, *self.argv]
        return [sys.executable, "-m", "mekb.cli.main", *self.argv]


class ComponentFailed(RuntimeError):
    pass


class _Running:
    def __init__(self, comp: Component, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        self.comp, self.proc, self.log = comp, proc, log


def _pump(name: str, src: IO[bytes], log: IO[bytes], echo: bool) -> None:
    """Copy a child's output into its log file and, prefixed, to our stdout."""
    prefix = f"[{name}] ".encode()
    for line in iter(src.readline, b""):
        log.write(line)
        log.flush()
        if echo:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str], *, echo: bool = True) -> None:
        self.log_dir = log_dir
        self.env = env
        self.echo = echo
        self._running: list[_Running] = []

    def start(self, comp: Component) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{comp.name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            comp.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, **comp.env}, start_new_session=True,
        )
        assert proc.stdout is not None
        threading.Thread(
            target=_pump, args=(comp.name, proc.stdout, log, self.echo), daemon=True
        ).start()
        self._running.append(_Running(comp, proc, log))
        logger.info("started %s (pid %d): %s", comp.name, proc.pid, " ".join(comp.command()))

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        """Wait until every component with a health URL answers 200."""
        deadline = time.monotonic() + timeout_s
        for run in self._running:
            url = run.comp.health_url
            while url:
                if run.proc.poll() is not None:
                    raise ComponentFailed(
                        f"{run.comp.name} exited with code {run.proc.returncode} "
                        f"(log: {self.log_dir / (run.comp.name + '.log')})"
                    )
                try:
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        if resp.status == 200:
                            logger.info("%s healthy at %s", run.comp.name, url)
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise ComponentFailed(f"{run.comp.name} not healthy after {timeout_s:.0f}s")
                time.sleep(0.5)

    def check_alive(self) -> None:
        for run in self._running:
            if run.proc.poll() is not None:
                raise ComponentFailed(f"{run.comp.name} exited with code {run.proc.returncode}")

    def stop_all(self, grace_s: float = 30.0) -> None:
        """SIGTERM every process (reverse start order), SIGKILL what outlives the grace."""
        for run in reversed(self._running):
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for run in reversed(self._running):
            try:
                run.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs: killing", run.comp.name, grace_s)
                run.proc.kill()
                run.proc.wait()
            run.log.close()
        self._running.clear()
