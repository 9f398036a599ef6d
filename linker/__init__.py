"""linker: see docs/architecture.md."""
