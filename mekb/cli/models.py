"""`mekb models`: list, inspect, activate, roll back, pin and prune registry versions."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import typer

from mekb.cli.common import CliError, require_broker, settings_with

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
        require_broker(settings)  # seconds, not the Kafka client's 30 s bootstrap wait
        send(settings, mv)
        typer.echo(f"announced on {settings.topic('model-updates')}")
    except Exception as exc:  # any broker failure: the pointer already moved
        typer.echo(
            f"warning: not announced ({type(exc).__name__}: {exc}); serving picks the new "
            f"ACTIVE up within MEKB_SERVING_REGISTRY_POLL_S={settings.serving_registry_poll_s}s",
            err=True,
        )


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def _pin_line(reg: Registry) -> str | None:
    pin = reg.pinned()
    if pin is None:
        return None
    return (f"pinned to {pin.version} since {_utc(pin.at)} ({pin.reason}): the trainer "
            "publishes new versions inactive until `mekb models unpin`")


@app.command("list")
def list_() -> None:
    """Every version, oldest first: id, version kind (full/items), model kind
    (embedme/entitygraph), state, creation time, parent, metrics. `*` marks the active
    one; the state column says `pinned` (active and held by a pin) or `held` (published
    inactive under a pin)."""
    settings, reg = _registry()
    active = reg.active_version()
    pin = reg.pinned()
    held = reg.held_versions()
    versions = reg.list()
    if not versions:
        typer.echo(f"no versions in {reg.root}")
        return
    for mv in versions:
        mark = "*" if mv.version == active else " "
        if mv.version == active:
            state = "pinned" if pin is not None and pin.version == active else "active"
        else:
            state = "held" if mv.version in held else "-"
        metrics = mv.manifest.get("metrics") or {}
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        typer.echo(
            f"{mark} {mv.version:<26} {mv.kind:<5} {mv.model_kind:<11} {state:<6} "
            f"{_utc(mv.created_at)} "
            f"parent={mv.parent or '-':<26} {shown}".rstrip()
        )
    if (line := _pin_line(reg)) is not None:
        typer.echo(line)


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
    pin = reg.pinned()
    if pin is not None and pin.version == mv.version:
        typer.echo(f"pinned since {_utc(pin.at)} ({pin.reason})", err=True)
    elif mv.version in reg.held_versions():
        typer.echo("held: published inactive while the registry was pinned", err=True)
    if check:
        typer.echo(f"checksums OK ({len(mv.files)} files)", err=True)


@app.command("activate")
def activate(
    version: str = typer.Argument(..., help="Version id to make active."),
    announce: bool = typer.Option(
        True, "--announce/--no-announce", help="Produce a model-updates event."
    ),
) -> None:
    """Verify a version's checksums and make it the active one (a pin moves with it)."""
    settings, reg = _registry()
    try:
        mv = reg.activate(version)
    except _errors() as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"active: {mv.version}" + (" (pinned)" if reg.pinned() else ""))
    _announce(settings, mv, announce)


@app.command("rollback")
def rollback(
    announce: bool = typer.Option(
        True, "--announce/--no-announce", help="Produce a model-updates event."
    ),
) -> None:
    """Re-activate the version that was active before the current one, and pin it (the
    trainer then publishes inactive until `mekb models unpin`)."""
    settings, reg = _registry()
    try:
        mv = reg.rollback()
    except _errors() as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"active: {mv.version} (pinned; `mekb models unpin` lets the trainer "
               "activate its versions again)")
    _announce(settings, mv, announce)


@app.command("pin")
def pin(
    version: str = typer.Argument(
        None, help="Version id to pin (default: the active one); made active if it is not."
    ),
    announce: bool = typer.Option(
        True, "--announce/--no-announce",
        help="Produce a model-updates event when the active version changes.",
    ),
) -> None:
    """Hold a version active: the trainer keeps training but publishes its new versions
    inactive (`held` in `mekb models list`) until `mekb models unpin`. Survives restarts."""
    settings, reg = _registry()
    previous = reg.active_version()
    try:
        target = version or previous
        if target is None:
            raise CliError("no active version; name one: mekb models pin VERSION")
        mv = reg.pin(target)
    except _errors() as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"pinned: {mv.version}" + ("" if previous == mv.version
                                          else f" (now active, was {previous or '-'})"))
    if previous != mv.version:
        _announce(settings, mv, announce)


@app.command("unpin")
def unpin() -> None:
    """Release the pin: the trainer's next version that passes the gate becomes active.
    Versions held while pinned stay inactive (activate one with `mekb models activate`)."""
    _, reg = _registry()
    released = reg.unpin()
    typer.echo(f"unpinned {released.version}" if released else "not pinned")


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
