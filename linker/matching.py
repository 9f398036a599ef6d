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
from typing import NamedTuple

import regex

from linker.alias_table import AliasTable, Candidate
from linker.base import LinkedEntity, Linker, dedupe
from linker.domain import Weights, domain_entities
from linker.normalize import clean_item_title, mention_key, spans, words
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
_SENTENCE_END = regex.compile(r"[.!?。！？](?:\s|$)")
# Lowercase words inside names: "Leonardo da Vinci", "Ludwig van Beethoven".
NAME_PARTICLES = words(
    "al bin da das de dei del della der di do dos du e el ibn la le los las ten ter "
    "van von y zu"
)


class Mention(NamedTuple):  # a tuple: built for every mention, so cheap to make
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


def at_sentence_start(text: str, start: int) -> bool:
    """True when `text[start:]` begins the text or a sentence."""
    head = text[:start].rstrip(" \t\n\"'“‘(")
    return not head or head[-1] in ".!?。！？"


def is_cased(text: str) -> bool:
    """Text with both capitals and lowercase letters (case filters apply)."""
    return text.lower() != text and text.upper() != text


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

    `capitalised_name` and the sentence-start rule in `longest_matches` add what
    needs the table.
    """
    compact = key.replace(" ", "")
    if len(compact) < 2 or compact.isdigit():
        return False
    toks = key.split(" ")
    if STOPWORDS.issuperset(toks):
        return False
    if cased_text and toks[0] in STOPWORDS and surface[:1].islower():
        return False  # "in London", "the Beatles": the name starts after the function word
    if cased_text and surface.lower() == surface:  # no capital letter
        return surface.upper() == surface  # no lowercase either: a script without case
    return True


def capitalised_name(table: AliasTable, key: str, surface: str) -> bool:
    """In running text a name capitalises its words, except function words, name
    particles ("Leonardo da Vinci") and, in some titles, words after a capitalised
    head ("Han dynasty"): a lowercase content word is accepted only there, and only
    when the words are the entity's own title. So "ancient Rome" links "Rome" and
    "the Yorkshire moors" (an alias of North York Moors) links "Yorkshire".
    """
    if " " not in surface:
        return True  # one word: `acceptable` has seen its capital
    words = surface.split()
    if not any(word.islower() for word in words):
        return True
    keys = [mention_key(word) for word in words]
    content = [_lower_content(w, k) for w, k in zip(words, keys, strict=True)
               if k not in STOPWORDS]
    if not any(content):
        return True
    if content[0]:
        return False  # "ancient Rome", "A romance": the first content word is lowercase
    cands = table.candidates(key)
    return bool(cands) and mention_key(cands[0].title) == key


def _lower_content(word: str, key: str) -> bool:
    """`word` (with key `key`) is lowercase and neither a function word nor a name
    particle; words of scripts without case never are."""
    if not word.islower():
        return False
    if len(word) < 2 or (not word.isalpha() and sum(c.isalpha() for c in word) < 2):
        return False
    return key not in STOPWORDS and key not in NAME_PARTICLES


def running_text(text: str) -> bool:
    """True for running text - a content word in lowercase, or a sentence end - and
    False for titles and headlines, where every word is capitalised."""
    return _SENTENCE_END.search(text) is not None or any(
        _lower_content(w, mention_key(w)) for w in text.split() if w.islower()
    )


def longest_matches(table: AliasTable, text: str) -> list[Mention]:
    """Greedy left-to-right longest match of table keys on token boundaries.

    At each token one trie call lists every key that starts there; the longest one
    that passes the filters (`acceptable`, `capitalised_name`, and at the start of a
    sentence of running text `names_entity`) wins and matching resumes after it. In
    cased text no mention can start at a lowercase word (a function word, or a
    content word: see the filters), so such tokens are skipped without a lookup.
    """
    text, tokens = spans(text)
    if not tokens:
        return []
    cased = is_cased(text)
    running: bool | None = None  # running_text(text), computed on first need
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
        tok = tokens[i]
        if cased and tok.text.islower() and (
            tok.key in STOPWORDS or _lower_content(tok.text, tok.key)
        ):  # (the common case: most words of running text)
            i += 1
            continue
        suffix = joined[starts[i] : seg_end[i]]
        found = table.prefixes(suffix)
        advance = 1
        if found:
            bounded = suffix + " "  # keys must end where a token does
            ends = [f for f in found if bounded[len(f)] == " "]
            for key in sorted(ends, key=len, reverse=True):
                j = i + key.count(" ")
                surface = text[tok.start : tokens[j].end]
                if not acceptable(key, surface, cased_text=cased):
                    continue
                if cased and not capitalised_name(table, key, surface):
                    continue
                if cased and tok.sent and i == j:
                    if running is None:
                        running = running_text(text)
                    if running and not names_entity(table, key):
                        continue
                out.append(Mention(key, surface, tok.start, tokens[j].end))
                advance = j - i + 1
                break
        i += advance
    return out


def names_entity(table: AliasTable, key: str) -> bool:
    """True when `key` is its best entity's own title, or the last words of it.

    Evidence that a capitalised word is a name where capitals say nothing (the start
    of a sentence): "Inception, directed by ..." (the title) and "Beethoven's Ninth"
    (the surname of Ludwig van Beethoven) link, while "Directed" (-> Director) and
    "Genres" (-> Genre), variants of a common noun's title, do not.
    """
    cands = table.candidates(key)
    if not cands:
        return False
    title = mention_key(cands[0].title)
    return title == key or title.endswith(" " + key)


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
        kb = self.weights.kb
        for item, links in zip(items, self.links_many(items), strict=True):
            # one entity per candidate, from its first mention (what `dedupe` keeps)
            first = {lk.candidate: None for lk in links if lk.candidate is not None}
            ents = [LinkedEntity(c.entity_id, c.title, kb, round(c.prior, 6))
                    for c in first] if kb > 0 else []
            ents.extend(domain_entities(item, self.weights))
            out.append(dedupe(ents))
        return out

    def close(self) -> None:
        self.table.close()
