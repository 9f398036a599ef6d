"""`mekb config`: every option, its environment variable and its effective value."""

from __future__ import annotations

import typer
from pydantic import SecretStr

from mekb.cli.common import settings_with
from mekb.settings import Settings


def config() -> None:
    """Show every MEKB_* option with its effective value (secrets masked)."""
    settings = settings_with()
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        shown = "********" if isinstance(value, SecretStr) else value
        typer.echo(f"MEKB_{name.upper():<22} = {shown!s:<24} {field.description}")
