"""`build_linker(settings)`: the one way other components get a linker."""

from __future__ import annotations

import logging
from pathlib import Path

from linker.base import Linker
from mekb.settings import Settings

logger = logging.getLogger(__name__)


def alias_table_path(settings: Settings) -> Path:
    """MEKB_ALIAS_TABLE, else $MEKB_DATA_DIR/alias-table."""
    return settings.alias_table or settings.data_dir / "alias-table"


def build_linker(settings: Settings) -> Linker:
    """The linker the settings choose (MEKB_LINKER_MODE), over the alias table opened
    read-only (any number of worker processes may do this at once).

    Raises `AliasTableError` when the table is missing (build it with `mekb linker
    build-default`, or `linker.default.ensure_default_table(settings)`) and
    `NerUnavailable` when ner mode's spaCy pipeline is not installed.
    """
    from linker.alias_table import AliasTable
    from linker.domain import Weights

    table = AliasTable.open(alias_table_path(settings))
    weights = Weights.from_settings(settings)
    min_prior, min_count = settings.linker_min_prior, settings.linker_min_count
    try:
        if settings.linker_mode == "ner":
            from linker.ner import NerLinker, load_pipeline

            return NerLinker(
                table, load_pipeline(settings.spacy_model),
                batch_size=settings.linker_batch_size, n_process=settings.linker_n_process,
                weights=weights, min_prior=min_prior, min_count=min_count,
            )
        from linker.dictionary import DictionaryLinker

        return DictionaryLinker(table, weights=weights, min_prior=min_prior, min_count=min_count)
    except BaseException:
        table.close()
        raise
