"""The scale benchmark at CI size through its real path (issue 19): the embedded broker,
`mekb worker` (processing, restart with one partition lost), `mekb serve` (catch-up,
cache misses), the trainer loop — every figure is produced and plausible."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_scale.py"
USERS, EVENTS = 10_000, 30_000


def test_bench_scale_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--users", str(USERS), "--items", "500", "--events",
         str(EVENTS), "--entities", "400", "--misses", "60", "--trainer-examples", "40",
         "--json", str(out)],
        capture_output=True, text=True, timeout=400, env=env, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["users"] == USERS and r["events"] == EVENTS
    # every figure of the issue, finite; sizes and rates positive
    for key in ("rate_first_10pct", "rate_last_10pct", "rocksdb_bytes_per_user",
                "restore_partition_s", "replica_catch_up_s", "replica_disk_mib",
                "bytes_per_item", "item_table_mib", "df_table_mib", "df_partials",
                "trainer_first_pass_examples_s", "trainer_steady_examples_s",
                "miss_p99_ms", "worker_cpu_us_per_event", "worker_peak_rss_mib",
                "broker_peak_rss_mib"):
        assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, key
    # heavy-tailed users, a real share of them with state, one partition really rebuilt
    assert r["events_per_user_max"] > 10 * r["events_per_user_p50"]
    assert 0.5 * USERS < r["users_with_state"] <= USERS
    assert r["restore_changelog_records"] > 0 and r["restore_dropped_keys"] > 0
    assert r["misses_measured"] > 0 and r["miss_p99_ms"] >= r["miss_p50_ms"]
    assert "cache-miss embedding p50 / p99" in run.stdout  # the printed table


def test_bench_scale_core_profiles_the_partition_core(tmp_path: Path) -> None:
    # --core: the partition core in process (how the worker's slowdown was profiled)
    out = tmp_path / "core.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--core", "--users", "2000", "--items", "500",
         "--events", "20000", "--entities", "400", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["events"] == 20_000 and r["core_batches"] >= 2  # batches of 10⁴ events
    assert r["core_us_per_event_first_10pct"] > 0 and r["core_us_per_event_last_10pct"] > 0
    for key in ("core_example_us_by_m", "core_update_us_by_m", "core_encode_us_by_m"):
        assert r[key] and all(v > 0 for v in r[key].values()), key
    # the largest MeKBs measured cost more to rank than ones of a handful of entities
    updates = r["core_update_us_by_m"]
    largest = max(updates, key=lambda m: int(m.split("-")[0]))
    assert largest != "1-8" and updates[largest] > updates["1-8"]
    assert "median µs per mekb-update" in run.stdout
