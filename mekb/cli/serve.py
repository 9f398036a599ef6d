"""`mekb serve`: the embedding service (HTTP API, replica of mekb-updates, hot-swapped models)."""

from __future__ import annotations

import typer

from mekb.cli.common import CliError, settings_with


def serve(
    host: str = typer.Option(None, "--host", help="Bind address (MEKB_SERVING_HOST)."),
    port: int = typer.Option(
        None, "--port", min=0, max=65535, help="Port (MEKB_SERVING_PORT)."
    ),
    device: str = typer.Option(
        None, "--device", help="auto, cpu or cuda (MEKB_SERVING_DEVICE)."
    ),
    shard: str = typer.Option(
        None, "--shard", help="i/n: serve only the users of shard i of n, 421 for the others "
        "(MEKB_SERVING_SHARD; routing rule in docs/contracts.md)."
    ),
) -> None:
    """Serve fresh user embeddings over HTTP (docs at /docs): follows mekb-updates into a
    local RocksDB replica and the registry's ACTIVE model version (model-updates events
    and polling), precomputes updated users, hot-swaps verified and warmed versions."""
    from serving.server import ServeConfigError, run

    settings = settings_with(serving_host=host, serving_port=port, serving_device=device,
                             serving_shard=shard)
    try:
        run(settings)
    except ServeConfigError as exc:
        raise CliError(str(exc)) from None
