"""Shared CLI helpers: the user-facing error type and settings with flag overrides."""

from __future__ import annotations

from typing import Any

from mekb.settings import Settings, get_settings


class CliError(Exception):
    """An error the user can fix: printed as one line, exit code 1."""


def settings_with(**overrides: Any) -> Settings:
    """Environment settings with the flags that were given (None = not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    base = get_settings()
    if not given:
        return base
    return Settings(**{**base.model_dump(), **given})
