"""`mekb models`: list, inspect, activate, roll back and prune registry versions."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import typer

from mekb.cli.common import CliError, settings_with

if TYPE_CHECKING:
    from mekb.registry import ModelVersion, Registry
    from mekb.settings import Settings

app = typer.Typer(help="Inspect and manage the model registry.", no_args_is_help=True)


def _registry() -> tuple[Settings, Registry]:
    from mekb.registry import Registry, registry_root

    settings = settings_with()
    return settings, Registry(registry_root(settings))


def _errors() -> type[Exception]:
    from mekb.registry import RegistryError

    return RegistryError


def _announce(settings: Settings, mv: ModelVersion, announce: bool) -> None:
    """Tell serving replicas; a missing broker is not fatal (they poll ACTIVE too)."""
    if not announce:
        return
    from mekb.registry import announce as send

    try:
        send(settings, mv)
        typer.echo(f"announced on {settings.topic('model-updates')}")
    except Exception as exc:  # any broker failure: the pointer already moved
        typer.echo(
            f"warning: not announced ({type(exc).__name__}: {exc}); serving picks the new "
            f"ACTIVE up within MEKB_SERVING_REGISTRY_POLL_S={settings.serving_registry_poll_s}s",
            err=True,
        )


@app.command("list")
def list_() -> None:
    """Every version, oldest first; `*` marks the active one."""
    settings, reg = _registry()
    active = reg.active_version()
    versions = reg.list()
    if not versions:
        typer.echo(f"no versions in {reg.root}")
        return
    for mv in versions:
        mark = "*" if mv.version == active else " "
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(mv.created_at))
        metrics = mv.manifest.get("metrics") or {}
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        typer.echo(
            f"{mark} {mv.version:<26} {mv.kind:<5} {created}Z parent={mv.parent or '-':<26} "
            f"{shown}".rstrip()
        )


@app.command("show")
def show(
    version: str = typer.Argument(None, help="Version id (default: the active one)."),
    check: bool = typer.Option(False, "--verify", help="Also recompute every sha256."),
) -> None:
    """The manifest of a version (JSON)."""
    _, reg = _registry()
    try:
        if version is None:
            mv = reg.active()
            if mv is None:
                raise CliError("no active version; name one: mekb models show VERSION")
        else:
            mv = reg.verify(version) if check else reg.get(version)
    except _errors() as exc:
        raise CliError(str(exc)) from None
    typer.echo(json.dumps(mv.manifest, indent=2, sort_keys=True))
    if check:
        typer.echo(f"checksums OK ({len(mv.files)} files)", err=True)


@app.command("activate")
def activate(
    version: str = typer.Argument(..., help="Version id to make active."),
    announce: bool = typer.Option(
        True, "--announce/--no-announce", help="Produce a model-updates event."
    ),
) -> None:
    """Verify a version's checksums and make it the active one."""
    settings, reg = _registry()
    try:
        mv = reg.activate(version)
    except _errors() as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"active: {mv.version}")
    _announce(settings, mv, announce)


@app.command("rollback")
def rollback(
    announce: bool = typer.Option(
        True, "--announce/--no-announce", help="Produce a model-updates event."
    ),
) -> None:
    """Re-activate the version that was active before the current one."""
    settings, reg = _registry()
    try:
        mv = reg.rollback()
    except _errors() as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"active: {mv.version}")
    _announce(settings, mv, announce)


@app.command("prune")
def prune(
    keep_last: int = typer.Option(
        None, "--keep-last", min=1, help="Versions to keep (MEKB_REGISTRY_KEEP_LAST)."
    ),
) -> None:
    """Apply the retention policy; never deletes the active version, its parent or the
    rollback target. Also removes staging directories of crashed publications."""
    settings, reg = _registry()
    keep = keep_last or settings.registry_keep_last
    try:
        deleted = reg.prune(keep)
    except _errors() as exc:
        raise CliError(str(exc)) from None
    removed = reg.cleanup()
    typer.echo(f"deleted {len(deleted)} versions, {len(removed)} leftover directories")
