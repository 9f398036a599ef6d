"""MeKB-Stream core: settings, event contracts, Kafka plumbing and the `mekb` CLI."""

from __future__ import annotations

__version__ = "0.1.0"
