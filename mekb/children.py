"""Child processes that do not outlive the process that started them.

`mekb up` starts the broker and every component as children. A clean stop terminates
them, but a parent killed outright (SIGKILL, the OOM killer, a CI time-out) cannot: the
children would run on as orphans, holding ports, data-directory locks and CPU. On Linux
the kernel can send them a signal instead when their parent dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once in the parent: the pre-exec hook below then calls C and nothing else.
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """`preexec_fn` for subprocess.Popen: the child gets SIGTERM when its parent dies.

    The kernel ties this to the *thread* that forked the child, so spawn from a thread that
    lives as long as the children should (the supervisor's main or monitor thread)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
