"""Local state stores of the stream worker: an abstract base and one module per backend."""

from __future__ import annotations

from streams.state.base import StateStore

__all__ = ["StateStore"]
