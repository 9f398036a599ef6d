"""`mekb trainer`: continuous training of one model kind (EntityGraph or EmbedMe) from
training-examples, item-tower refit, gated publication into the model registry."""

from __future__ import annotations

import asyncio
import signal

import typer

from mekb.cli.common import SERVICE_BROKER_WAIT_S, CliError, require_broker, settings_with


def trainer(
    port: int = typer.Option(
        None, "--port", min=0, max=65535,
        help="/metrics and /healthz port on MEKB_METRICS_HOST (MEKB_TRAINER_PORT).",
    ),
    publish_every: int = typer.Option(
        None, "--publish-every", min=0,
        help="Trained examples between candidate publications (MEKB_TRAINER_PUBLISH_EVERY; "
        "unset: the kind's, EmbedMe 5000, EntityGraph 100000).",
    ),
    refit_interval: float = typer.Option(
        None, "--refit-interval", min=0.001,
        help="Seconds between item-tower refits (MEKB_TRAINER_REFIT_INTERVAL_S).",
    ),
    kind: str = typer.Option(
        None, "--kind", help="Model kind to train: entitygraph or embedme (MEKB_MODEL_KIND; "
        "unset: embedme). One trainer per registry trains one kind.",
    ),
) -> None:
    """Train one model kind on the stream of point-in-time examples; publish gated
    versions (full: user tower + items; items: hourly item-tower refit) and announce
    them. The gate compares each candidate with the active version, whatever its kind."""
    import torch
    from prometheus_client import CollectorRegistry

    from mekb.metrics_http import serve
    from mekb.registry import MODEL_KINDS, Announcer, Registry, registry_root
    from trainer.model import ModelError
    from trainer.online.checkpoint import CheckpointStore
    from trainer.online.kinds import checkpoint_dir, online_kind, trainer_kind
    from trainer.online.loop import OnlineTrainer, model_config, state_dir
    from trainer.online.metrics import TrainerMetrics
    from trainer.online.resume import load_start
    from trainer.online.service import AlreadyRunning, Health, acquire_lock, run

    if kind is not None and kind not in MODEL_KINDS:
        raise CliError(f"unknown model kind {kind!r} (known: {', '.join(MODEL_KINDS)})")
    settings = settings_with(trainer_port=port, trainer_publish_every=publish_every,
                             trainer_refit_interval_s=refit_interval, model_kind=kind)
    require_broker(settings, SERVICE_BROKER_WAIT_S)
    try:
        lock = acquire_lock(registry_root(settings) / ".trainer.lock")
    except AlreadyRunning as exc:
        raise CliError(str(exc)) from None
    health = Health()
    prom = CollectorRegistry()
    metrics = TrainerMetrics(prom)
    server = serve(settings.metrics_host, settings.trainer_port, prom, health.response,
                   name="trainer")
    typer.echo(f"trainer: http://{settings.metrics_host}:{server.server_address[1]}/metrics "
               "and /healthz")
    try:
        torch.manual_seed(settings.trainer_seed)
        model_kind = online_kind(trainer_kind(settings), settings)
        store = CheckpointStore(checkpoint_dir(state_dir(settings), model_kind.name))
        registry = Registry(registry_root(settings))
        try:
            start = load_start(settings, store, registry, model_config(settings), model_kind)
        except ModelError as exc:
            raise CliError(f"cannot load the model: {exc}") from None
        health.source = start.source
        typer.echo(f"trainer: training model kind {model_kind.name} (from {start.source})")
        announcer = Announcer(settings)
        online = OnlineTrainer(settings, start.model, start.state, start.optimizer_state,
                               store, registry, metrics, announce=announcer, kind=model_kind)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await run(settings, online, health, stop)

        try:
            asyncio.run(main())
        finally:
            announcer.close()
    finally:
        server.shutdown()
        lock.close()
