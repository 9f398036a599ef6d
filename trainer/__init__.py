"""trainer: see docs/architecture.md."""
