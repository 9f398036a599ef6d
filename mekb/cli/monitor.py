"""`mekb monitor`: the drift monitor process (entity and embedding drift metrics)."""

from __future__ import annotations

import asyncio
import signal

import typer

from mekb.cli.common import SERVICE_BROKER_WAIT_S, require_broker, settings_with


def monitor(
    port: int = typer.Option(
        None, "--port", min=0, max=65535,
        help="/metrics port on MEKB_METRICS_HOST (MEKB_MONITOR_PORT).",
    ),
    window: float = typer.Option(
        None, "--window", min=0.001, help="Entity drift window in seconds (MEKB_DRIFT_WINDOW_S)."
    ),
) -> None:
    """Export drift metrics: entity-distribution drift between stream windows and embedding
    drift between consecutive model versions on a fixed probe set of users."""
    from prometheus_client import CollectorRegistry, start_http_server

    from mekb.registry import Registry, registry_root
    from monitoring.bundles import RegistryModels
    from monitoring.metrics import MonitorMetrics
    from monitoring.monitor import DriftMonitor, ProbeSet, run_monitor

    settings = settings_with(monitor_port=port, drift_window_s=window)
    require_broker(settings, SERVICE_BROKER_WAIT_S)
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    start_http_server(settings.monitor_port, addr=settings.metrics_host, registry=registry)
    probe = ProbeSet(settings.data_dir / "monitor" / "probe.json", settings.drift_probe_users)
    models = RegistryModels(Registry(registry_root(settings)))
    drift = DriftMonitor(metrics, settings.drift_window_s, probe,
                         encode=models.encode, items=models.items)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_monitor(settings, drift, stop)

    typer.echo(f"drift monitor: metrics on http://{settings.metrics_host}:{settings.monitor_port}/metrics")
    asyncio.run(main())
