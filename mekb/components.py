"""The component processes `mekb up` starts, in start order.

Each later component (stream worker, trainer, server) registers itself here
with its `mekb` sub-command and health URL.
"""

from __future__ import annotations

from mekb.settings import Settings
from mekb.supervisor import Component


def components(settings: Settings) -> list[Component]:
    """Processes of the whole system on top of the broker (none yet beyond the broker)."""
    del settings
    return []
