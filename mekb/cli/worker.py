"""`mekb worker`: the stream worker (item agent, MeKB agent, df and item tables)."""

from __future__ import annotations

import asyncio
import signal

import typer

from mekb.cli.common import SERVICE_BROKER_WAIT_S, CliError, require_broker, settings_with


def worker(
    worker_id: str = typer.Option(
        None, "--id", help="Worker name; RocksDB in $MEKB_DATA_DIR/streams/<id> (MEKB_WORKER_ID)."
    ),
    port: int = typer.Option(
        None, "--port", min=0, max=65535,
        help="/metrics and /healthz port on MEKB_METRICS_HOST (MEKB_WORKER_PORT).",
    ),
    runtime: str = typer.Option(
        "aiokafka", "--runtime",
        help="aiokafka (the default worker) or faust (the same agents as faust-streaming "
        "agents of an app of their own, see streams/faust_app.py).",
    ),
) -> None:
    """Keep every user's MeKB and the global entity df/N in RocksDB from the interaction
    and item streams; publish mekb-updates and training-examples."""
    from prometheus_client import CollectorRegistry

    from linker.factory import build_linker
    from mekb.metrics_http import serve
    from streams.metrics import StreamMetrics
    from streams.state.rocksdb import RocksDBStore
    from streams.worker import StreamWorker, health_json

    settings = settings_with(worker_id=worker_id, worker_port=port)
    if runtime not in ("aiokafka", "faust"):
        raise CliError(f"--runtime must be aiokafka or faust, not {runtime!r}")
    if runtime == "faust" and settings.exactly_once:
        raise CliError("MEKB_EXACTLY_ONCE needs the aiokafka runtime; the Faust runtime is "
                       "at-least-once (state stays exact)")
    if settings.exactly_once and settings.flavor == "tansu":
        raise CliError("MEKB_EXACTLY_ONCE needs Apache Kafka; the embedded broker has no "
                       "transactions (the default at-least-once keeps state exact)")
    require_broker(settings, SERVICE_BROKER_WAIT_S)
    from streams.memory_budget import MemoryBudgetError, check

    try:
        check(settings)
    except MemoryBudgetError as exc:
        raise CliError(str(exc)) from None
    try:
        linker = build_linker(settings)
    except Exception as exc:  # AliasTableError, NerUnavailable: user-fixable
        raise CliError(f"no entity linker: {exc}") from None
    registry = CollectorRegistry()
    store = RocksDBStore(settings.data_dir / "streams" / settings.worker_id)
    stream_worker: StreamWorker
    if runtime == "faust":
        from streams.faust_app import build_app, install

        app = build_app(settings)
        stream_worker = install(app, settings, metrics=StreamMetrics(registry), linker=linker,
                                store=store).worker
    else:
        stream_worker = StreamWorker(settings, store, linker, StreamMetrics(registry))
    server = serve(settings.metrics_host, settings.worker_port, registry,
                   lambda: health_json(stream_worker), name="worker")
    typer.echo(f"stream worker {settings.worker_id}: http://{settings.metrics_host}:"
               f"{server.server_address[1]}/metrics and /healthz")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stream_worker.run(stop)

    try:
        if runtime == "faust":
            from streams.faust_app import run

            run(app, settings)  # until SIGTERM/SIGINT
        else:
            asyncio.run(main())
    finally:
        server.shutdown()
        store.close()
        linker.close()
