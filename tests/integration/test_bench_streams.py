"""The stream worker's benchmark, small, through its real path (broker, `mekb worker`
processes, raw consumer): the script anyone runs to check issue 4's figures keeps
working and reports a rate that comes from the worker's committed batches."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mekb.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_streams.py"


def _bench(broker: EmbeddedBroker, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEKB_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--bootstrap", broker.bootstrap_servers,
         "--users", "300", "--items", "100", "--repeat", "1", *args],
        capture_output=True, text=True, timeout=240, env=env, check=False)


def _figure(out: str, label: str) -> float:
    found = re.search(rf"^\s+{label}\s+([\d,.]+)", out, re.MULTILINE)  # the summary lines
    assert found, f"{label!r} missing from:\n{out}"
    return float(found.group(1).replace(",", ""))


def test_bench_streams_reports_rate_ratio_and_rss(broker: EmbeddedBroker) -> None:
    # Batches of 500: the rate is timed from the first committed batch to the last.
    # Both runtimes side by side: the default worker, then the Faust one.
    done = _bench(broker, "--events", "3000", "--batch-max", "500",
                  "--runtimes", "aiokafka,faust")
    assert done.returncode == 0, done.stdout + done.stderr
    run = dict(re.findall(r"(\w+) ([\d,.]+)", done.stdout.split("\n", 1)[0]))
    events = float(run["events"].replace(",", ""))
    assert events > 3000  # + producer duplicates and malformed records
    rate = _figure(done.stdout, "worker end-to-end")
    raw = _figure(done.stdout, "raw aiokafka consume")
    assert 0 < rate < raw
    ratio = _figure(done.stdout, "ratio") / 100
    assert ratio == pytest.approx(rate / raw, abs=0.001)
    assert _figure(done.stdout, "worker peak RSS") > 20  # MiB of a real worker process
    assert "run 1 (faust)" in done.stdout  # a run of its own, on topics of its own
    faust = _figure(done.stdout, "faust worker")
    assert 0 < faust < raw * 2  # (its raw baseline is another run's)
    assert _figure(done.stdout, "faust / aiokafka") == pytest.approx(faust / rate, abs=0.01)


def test_bench_streams_refuses_a_run_too_small_to_time(broker: EmbeddedBroker) -> None:
    done = _bench(broker, "--events", "1000")
    assert done.returncode != 0
    assert "first batch" in done.stderr and "Traceback" not in done.stderr
