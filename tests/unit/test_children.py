"""Children started with die_with_parent end when their parent is killed outright."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

PARENT = """
import os, signal, subprocess, sys
from mekb.children import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=die_with_parent if sys.argv[1] == "1" else None)
print(child.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _orphan_after_parent_sigkill(tie: bool) -> tuple[int, bool]:
    out = subprocess.run([sys.executable, "-c", PARENT, "1" if tie else "0"],
                         capture_output=True, text=True, timeout=30)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return pid, _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_dies_with_its_killed_parent_and_would_not_otherwise() -> None:
    pid, alive = _orphan_after_parent_sigkill(tie=True)
    assert not alive, f"child {pid} outlived its SIGKILLed parent"
    # Control: without the hook the orphan runs on (so the test above can fail).
    pid, alive = _orphan_after_parent_sigkill(tie=False)
    try:
        assert alive
    finally:
        os.kill(pid, 9)
