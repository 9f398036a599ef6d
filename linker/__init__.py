"""linker: entity linking of item text (see docs/architecture.md and README "Linking").

`build_linker(settings)` returns the configured `Linker`; `AliasTable.build(path, rows)`
makes a small real alias table (tests); `linker.default.ensure_default_table(settings)`
builds the embedded DBpedia default. Heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from linker.base import BRAND, CATEGORY, KB, PRODUCT, LinkedEntity, Linker, dedupe

if TYPE_CHECKING:
    from linker.alias_table import AliasTable
    from linker.factory import build_linker

__all__ = [
    "BRAND", "CATEGORY", "KB", "PRODUCT", "AliasTable", "LinkedEntity", "Linker",
    "build_linker", "dedupe",
]


def __getattr__(name: str) -> Any:
    if name == "build_linker":
        from linker.factory import build_linker

        return build_linker
    if name == "AliasTable":
        from linker.alias_table import AliasTable

        return AliasTable
    raise AttributeError(name)
