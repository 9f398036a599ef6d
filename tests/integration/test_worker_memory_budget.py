"""MEKB_WORKER_MEMORY_BUDGET_MB through the real path (issue 19): a real `mekb worker`
against a real broker whose item-entities topic holds 40,000 linked items refuses to
start with one `mekb: error:` line when its budget cannot hold them, and starts when
it can."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mekb.broker import free_port
from mekb.settings import Settings
from mekb.topics import create_topics
from streams.catalog import LinkedItem
from streams.memory_budget import BASE_MB, ITEM_BYTES, MIB
from streams.synthetic import alias_rows
from tests.integration.streams_helpers import produce, worker_env
from tests.integration.system_helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = 40_000


def test_worker_over_its_memory_budget_refuses_to_start(settings: Settings,
                                                         tmp_path: Path) -> None:
    from linker.alias_table import AliasTable

    s = Settings(**{**settings.model_dump(), "worker_cache_users": 0})
    create_topics(s)
    alias = tmp_path / "alias"
    AliasTable.build(alias, alias_rows(20)).close()
    produce(s, "item-entities", [
        (f"i{n}".encode(), LinkedItem(f"i{n}", "movies", ((f"product:i{n}", f"i{n}", 1.0),),
                                      "d").encode()) for n in range(ITEMS)])
    items_mb = ITEMS * ITEM_BYTES / MIB  # ~61 MiB: the term that decides

    env = worker_env(s, alias, "budget", free_port())
    env["MEKB_WORKER_CACHE_USERS"] = "0"
    env["MEKB_WORKER_MEMORY_BUDGET_MB"] = str(int(BASE_MB + items_mb / 2))
    refused = subprocess.run([sys.executable, "-m", "mekb.cli.main", "worker"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert lines[0].startswith("mekb: error: worker memory estimate "), lines[0]
    assert f"MEKB_WORKER_MEMORY_BUDGET_MB={int(BASE_MB + items_mb / 2)}" in lines[0]
    # Tansu's ListOffsets LATEST may miss the last multi-record batch (serving/updates.py)
    counted = int(re.search(r"item table ([\d,]+) items", lines[0]).group(1).replace(",", ""))
    assert 0.9 * ITEMS <= counted <= ITEMS, lines[0]

    # The same worker with room for its item table starts and loads every item.
    port = free_port()
    env = worker_env(s, alias, "budget", port)
    env["MEKB_WORKER_CACHE_USERS"] = "0"
    env["MEKB_WORKER_MEMORY_BUDGET_MB"] = str(int(BASE_MB + items_mb * 2))
    with open(tmp_path / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mekb.cli.main", "worker"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        def loaded() -> bool:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return f"mekb_streams_items {float(ITEMS)}" in r.read().decode()
            except OSError:
                return False
        wait_for(loaded, 120, "the worker to load every item")
    finally:
        proc.terminate()
        proc.wait(30)
