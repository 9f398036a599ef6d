"""What both mention detectors share: item texts, mention filters, longest match, AT@1.

`TableLinker` turns detected mentions into knowledge-base entities with AT@1 (the
candidate with the highest prior, kept only above the thresholds), adds the domain
entities and counts mentions that found no entity (`stats`).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from linker.alias_table import AliasTable, Candidate
from linker.base import LinkedEntity, Linker, dedupe
from linker.domain import Weights, domain_entities
from linker.normalize import Token, clean_item_title, spans, words
from mekb.events import ItemEvent

logger = logging.getLogger(__name__)

# Function words that are also knowledge-base titles ("The", "It", "A") but are
# almost never meant as one when they stand alone in item text.
STOPWORDS = words(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers herself him
    himself his how i if in into is it its itself just me more most my myself no nor not
    now of off on once only or other our ours out over own same she should so some such
    than that the their theirs them themselves then there these they this those through
    to too under until up very was we were what when where which while who whom why will
    with would you your yours yourself"""
)


@dataclass(frozen=True)
class Mention:
    """A detected mention: `key` is its alias-table key, `text` the surface form."""

    key: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Link:
    """A mention with the outcome of AT@1 (`candidate` None = unlinked)."""

    mention: Mention
    candidate: Candidate | None
    n_candidates: int


@dataclass
class LinkStats:
    """Counters since the linker was created (mentions = linked + unlinked)."""

    items: int = 0
    mentions: int = 0
    linked: int = 0
    unlinked: int = 0


def item_texts(item: ItemEvent) -> list[str]:
    """The texts linked for an item: the cleaned title, then the description (if any)."""
    title = clean_item_title(item.title)
    return [title, item.text] if item.text else [title]


def _is_cased(text: str) -> bool:
    return any(c.isupper() for c in text) and any(c.islower() for c in text)


def acceptable(key: str, surface: str, *, cased_text: bool) -> bool:
    """Filters of a matched mention.

    - at least two letters/digits ("A", "中" alone are too ambiguous);
    - not purely numeric (years, counts);
    - not made only of stop words, and in cased text not starting with a lowercase
      one ("in London" is "London");
    - in cased text, at least one capital letter: common words that are also titles
      ("directed", "comedy" in running text) stay unlinked, while names ("Comedy" as
      a genre label, "iPhone") link. Scripts without case (Chinese, Japanese, Thai)
      pass, and so does text written all in one case.
    """
    compact = key.replace(" ", "")
    if len(compact) < 2 or compact.isdigit():
        return False
    toks = key.split(" ")
    if all(tok in STOPWORDS for tok in toks):
        return False
    if cased_text and toks[0] in STOPWORDS and surface[:1].islower():
        return False  # "in London", "the Beatles": the name starts after the function word
    if cased_text and not any(c.isupper() for c in surface):
        return not any(c.islower() for c in surface)  # uncased scripts
    return True


def longest_matches(
    table: AliasTable, text: str, tokens: list[Token] | None = None
) -> list[Mention]:
    """Greedy left-to-right longest match of table keys on token boundaries.

    At each token one trie call lists every key that starts there; the longest one
    that passes `acceptable` wins and matching resumes after it.
    """
    if tokens is None:
        text, tokens = spans(text)
    if not tokens:
        return []
    cased = _is_cased(text)
    keys = [t.key for t in tokens]
    joined = " ".join(keys)
    n = len(tokens)
    starts = []
    pos = 0
    for k in keys:
        starts.append(pos)
        pos += len(k) + 1
    # each token's segment ends where the next hard separator (",", ":", ...) is
    seg_end = [0] * n
    end = len(joined)
    for idx in range(n - 1, -1, -1):
        seg_end[idx] = end
        if tokens[idx].brk:
            end = starts[idx] - 1
    out: list[Mention] = []
    i = 0
    while i < n:
        suffix = joined[starts[i] : seg_end[i]]
        found = table.prefixes(suffix)
        advance = 1
        if found:
            ends = [f for f in found if len(f) == len(suffix) or suffix[len(f)] == " "]
            for key in sorted(ends, key=len, reverse=True):
                j = i + key.count(" ")
                surface = text[tokens[i].start : tokens[j].end]
                if acceptable(key, surface, cased_text=cased):
                    out.append(Mention(key, surface, tokens[i].start, tokens[j].end))
                    advance = j - i + 1
                    break
        i += advance
    return out


class TableLinker(Linker):
    """AT@1 over an alias table plus domain entities; subclasses detect mentions."""

    mode = "base"

    def __init__(
        self,
        table: AliasTable,
        *,
        weights: Weights | None = None,
        min_prior: float = 0.0,
        min_count: int = 1,
    ) -> None:
        self.table = table
        self.weights = weights or Weights()
        self.min_prior = min_prior
        self.min_count = min_count
        self.stats = LinkStats()

    @abstractmethod
    def detect_many(self, items: Sequence[ItemEvent]) -> list[list[Mention]]:
        """Mentions of each item (over all of its texts)."""

    @abstractmethod
    def detect_texts(self, texts: Sequence[str]) -> list[list[Mention]]:
        """Mentions of each plain text (offsets index the NFKC form of the text)."""

    def links_texts(self, texts: Sequence[str]) -> list[list[Link]]:
        """Every mention of each text with its AT@1 outcome (for `mekb link`, quality)."""
        return [[self.disambiguate(m) for m in ms] for ms in self.detect_texts(texts)]

    def disambiguate(self, mention: Mention) -> Link:
        cands = self.table.candidates(mention.key)
        best = self.table.best(mention.key, min_prior=self.min_prior, min_count=self.min_count)
        return Link(mention, best, len(cands))

    def links_many(self, items: Sequence[ItemEvent]) -> list[list[Link]]:
        """Every mention with its AT@1 outcome (linked or not), per item."""
        out = []
        for mentions in self.detect_many(items):
            links = [self.disambiguate(m) for m in mentions]
            linked = sum(1 for lk in links if lk.candidate is not None)
            self.stats.items += 1
            self.stats.mentions += len(links)
            self.stats.linked += linked
            self.stats.unlinked += len(links) - linked
            out.append(links)
        return out

    def link(self, item: ItemEvent) -> list[LinkedEntity]:
        return self.link_many([item])[0]

    def link_many(self, items: Sequence[ItemEvent]) -> list[list[LinkedEntity]]:
        out = []
        for item, links in zip(items, self.links_many(items), strict=True):
            ents = [
                LinkedEntity(lk.candidate.entity_id, lk.candidate.title, self.weights.kb,
                             round(lk.candidate.prior, 6))
                for lk in links
                if lk.candidate is not None and self.weights.kb > 0
            ]
            ents.extend(domain_entities(item, self.weights))
            out.append(dedupe(ents))
        return out

    def close(self) -> None:
        self.table.close()
