"""`mekb users delete` refuses bad input with one line before anything is sent (the
published path runs against the real broker in tests/integration/test_streams_retention.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mekb.broker import free_port
from tests.unit.test_cli import run_cli


def test_bad_ids_and_missing_input_are_one_line_errors(tmp_path: Path) -> None:
    for args, message in (
        ((), "no user ids given"),
        (("ok", "bad\x01id"), "user id 'bad\\x01id': String should match pattern"),
        (("--file", str(tmp_path / "none.txt")), "no such file"),
        (("x" * 200,), "at most 128 characters"),
    ):
        result = run_cli("users", "delete", *args)
        assert result.returncode == 1, result
        assert result.stderr.startswith("mekb: error: ") and message in result.stderr, result
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_an_unreachable_broker_is_named(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("u1\n\n u2 \n")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "users", "delete", "--file", str(ids)],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "MEKB_BOOTSTRAP_SERVERS": address})
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"mekb: error: broker at {address} unreachable"), result
