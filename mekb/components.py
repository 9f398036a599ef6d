"""The component processes `mekb up` starts, in start order, with their health and
metrics URLs.

Every process binds 127.0.0.1 on its configured port (MEKB_WORKER_PORT,
MEKB_TRAINER_PORT, MEKB_SERVING_PORT, MEKB_MONITOR_PORT; `mekb up --worker-port` etc.).
"""

from __future__ import annotations

from mekb.settings import Settings
from mekb.supervisor import Component

LOCAL = "127.0.0.1"


def components(settings: Settings) -> list[Component]:
    """Stream worker, trainer, serving and drift monitor on top of the broker."""
    out = []
    for name, argv, port, health in (
        ("worker", "worker", settings.worker_port, "/healthz"),
        ("trainer", "trainer", settings.trainer_port, "/healthz"),
        ("serving", "serve", settings.serving_port, "/healthz"),
        ("monitor", "monitor", settings.monitor_port, "/metrics"),  # no /healthz of its own
    ):
        base = f"http://{LOCAL}:{port}"
        out.append(Component(name, (argv,), base + health, metrics_url=base + "/metrics"))
    return out


def scrape_targets(settings: Settings) -> dict[str, str]:
    """Prometheus job -> host:port of every component's /metrics."""
    return {
        "mekb-worker": f"{LOCAL}:{settings.worker_port}",
        "mekb-trainer": f"{LOCAL}:{settings.trainer_port}",
        "mekb-serving": f"{LOCAL}:{settings.serving_port}",
        "mekb-monitor": f"{LOCAL}:{settings.monitor_port}",
    }
