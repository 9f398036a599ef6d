"""Dictionary mention detection: longest match of alias-table keys in the item text.

Language-agnostic (the paper's mode for Chinese): no model, only the table's
normalisation and tokenisation (`linker.normalize`), so it runs wherever the table
does and costs one trie call per token.
"""

from __future__ import annotations

from collections.abc import Sequence

from linker.matching import Mention, TableLinker, item_texts, longest_matches
from mekb.events import ItemEvent


class DictionaryLinker(TableLinker):
    mode = "dictionary"

    def detect_texts(self, texts: Sequence[str]) -> list[list[Mention]]:
        return [longest_matches(self.table, text) for text in texts]

    def detect_many(self, items: Sequence[ItemEvent]) -> list[list[Mention]]:
        out = []
        for item in items:
            mentions: list[Mention] = []
            for text in item_texts(item):
                mentions.extend(longest_matches(self.table, text))
            out.append(mentions)
        return out
