"""The code's static checks, run by the test command so that CI enforces them: ruff
(pyproject's lint rules) over the whole repository, and mypy (pyproject's settings) over
every package. The bench/ scripts and the tests are linted but not type-checked yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["linker", "streams", "kg", "trainer", "serving", "monitoring", "mekb", "mekb_client"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


def test_every_package_is_listed() -> None:
    # a package added later is type-checked too, or this fails
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == set(PACKAGES), found ^ set(PACKAGES)


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(900)
def test_mypy_finds_nothing() -> None:
    result = _run("mypy", *PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr
