"""The component processes `mekb up` starts, in start order, with their health URLs.

Every process binds 127.0.0.1 on its configured port (MEKB_WORKER_PORT,
MEKB_TRAINER_PORT, MEKB_SERVING_PORT, MEKB_MONITOR_PORT).
"""

from __future__ import annotations

from mekb.settings import Settings
from mekb.supervisor import Component

LOCAL = "127.0.0.1"


def components(settings: Settings) -> list[Component]:
    """Stream worker, trainer, serving and drift monitor on top of the broker."""
    return [
        Component("worker", ("worker",), f"http://{LOCAL}:{settings.worker_port}/healthz"),
        Component("trainer", ("trainer",), f"http://{LOCAL}:{settings.trainer_port}/healthz"),
        Component("serving", ("serve",), f"http://{LOCAL}:{settings.serving_port}/healthz"),
        Component("monitor", ("monitor",), f"http://{LOCAL}:{settings.monitor_port}/metrics"),
    ]


def scrape_targets(settings: Settings) -> dict[str, str]:
    """Prometheus job -> host:port of every component's /metrics."""
    return {
        "mekb-worker": f"{LOCAL}:{settings.worker_port}",
        "mekb-trainer": f"{LOCAL}:{settings.trainer_port}",
        "mekb-serving": f"{LOCAL}:{settings.serving_port}",
        "mekb-monitor": f"{LOCAL}:{settings.monitor_port}",
    }
