"""Errors a user can act on (the CLI prints them as one line, no traceback)."""

from __future__ import annotations


class LinkerError(Exception):
    """Base of the linker's user-fixable errors."""


class DumpError(LinkerError):
    """A bad or truncated dump file; the message names the file and the offset."""
