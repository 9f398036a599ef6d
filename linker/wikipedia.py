"""Alias table from a Wikipedia pages-articles dump (MediaWiki export XML, `.xml` or
`.xml.bz2`): internal links `[[Target|anchor]]`, redirects and page titles.

One streaming pass (ElementTree.iterparse; each page is cleared once read, so memory
does not grow with the dump):
- every article title t gives (t without its qualifier, t, 1): "Inception (film)" is
  mentioned as "Inception";
- every redirect r -> t gives (r, t, 1);
- every link [[T|a]] in an article gives (a, T, 1) ([[T]] gives (T, T, 1)).
Pages are recorded in a scratch RocksDB (title -> article / redirect target /
disambiguation page) so that, at merge time, link targets are resolved through
redirects (up to 3 hops), and links to missing pages (red links), to disambiguation
pages or into other namespaces are dropped. So p(e|m) = anchor counts of (m, e) over
all anchors, titles and redirects with text m.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from linker.dumps import DumpReader
from linker.errors import DumpError
from linker.normalize import strip_qualifier, words

logger = logging.getLogger(__name__)

SOURCE = "wikipedia"
_LINK = regex.compile(r"\[\[([^\[\]|\n]+)(?:\|([^\[\]\n]*))?\]\]")
_DISAMBIG = regex.compile(
    r"\{\{\s*(?:disambiguation|disambig|dab|hndis|geodis|surname|given name)\s*[|}]",
    regex.IGNORECASE,
)
_MARKUP = regex.compile(r"'{2,}|<[^>]*>")
_ARTICLE, _DISAMBIG_PAGE, _REDIRECT = b"A", b"D", b"R"
# Interlanguage prefixes ("fr:", "zh-yue:") and the usual namespaces; the dump's own
# <siteinfo> namespaces are added when present.
_DEFAULT_NAMESPACES = words(
    "media special talk user wikipedia wp file image mediawiki template help category "
    "portal draft module timedtext book education program gadget wiktionary wikt "
    "commons wikisource s wikiquote q meta m species"
)
_LANG_PREFIX = regex.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*$")


@dataclass
class WikiStats:
    pages: int = 0
    articles: int = 0
    redirects: int = 0
    disambiguation: int = 0
    links: int = 0
    skipped_links: int = 0


def normalise_title(title: str) -> str:
    """MediaWiki canonical title: underscores as spaces, whitespace collapsed, first
    letter upper-cased (first-letter case sensitivity, the Wikipedia default)."""
    title = " ".join(title.replace("_", " ").split())
    return title[:1].upper() + title[1:] if title else title


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def link_target(raw: str, namespaces: frozenset[str]) -> str | None:
    """The article a link points at, or None for other namespaces and interwiki links."""
    target = raw.split("#", 1)[0].strip()
    if not target or target.startswith(":"):
        return None
    if ":" in target:
        prefix = target.split(":", 1)[0].strip().lower()
        if prefix in namespaces or _LANG_PREFIX.match(prefix):
            return None
    return normalise_title(target)


def anchor_text(raw: str) -> str:
    return " ".join(_MARKUP.sub("", raw).split())


def pages(reader: DumpReader) -> Iterator[tuple[str, int, str | None, str, frozenset[str]]]:
    """(title, ns, redirect target, text, namespaces) per page, in dump order."""
    namespaces = set(_DEFAULT_NAMESPACES)
    root: Any = None
    title, ns, redirect, text = "", 0, None, ""
    context = ET.iterparse(reader, events=("start", "end"))
    try:
        for event, elem in context:
            if root is None:
                root = elem
                if _local(root.tag) != "mediawiki":
                    raise DumpError(
                        f"{reader.path}: not a MediaWiki export (root element "
                        f"<{_local(root.tag)}> at line 1)"
                    )
            if event == "start":
                continue
            tag = _local(elem.tag)
            if tag == "namespace" and elem.text and elem.get("key") not in (None, "0"):
                namespaces.add(elem.text.strip().lower())
            elif tag == "title":
                title = elem.text or ""
            elif tag == "ns":
                try:
                    ns = int(elem.text or "0")
                except ValueError:
                    ns = -1
            elif tag == "redirect":
                redirect = elem.get("title")
            elif tag == "text":
                text = elem.text or ""
            elif tag == "page":
                yield title, ns, redirect, text, frozenset(namespaces)
                title, ns, redirect, text = "", 0, None, ""
                root.clear()  # drop finished pages: memory stays flat
    except ET.ParseError as exc:
        line, column = exc.position
        what = "truncated" if "no element found" in str(exc) else "malformed XML"
        raise DumpError(
            f"{reader.path}: {what} at line {line}, column {column} (file byte "
            f"{reader.position}, after {reader.consumed} uncompressed bytes): {exc}"
        ) from None


def build_wikipedia(
    dump: str | os.PathLike[str], out: Path, *, progress: bool = False,
    spill_rows: int = 2_000_000, max_candidates: int = 16,
) -> dict[str, Any]:
    """Build an alias table at `out` from a pages-articles dump; returns its metadata."""
    from rocksdict import Rdict, WriteBatch

    from linker.alias_table import _rocks_options
    from linker.builder import TableBuilder

    stats = WikiStats()
    builder = TableBuilder(
        out, source=SOURCE, spill_rows=spill_rows, max_candidates=max_candidates,
        progress=progress,
    )
    scratch = builder.scratch("pages")
    db = Rdict(str(scratch), _rocks_options(create=True))
    try:
        batch = WriteBatch(raw_mode=True)
        with DumpReader(dump, progress="reading dump" if progress else None) as reader:
            for title, ns, redirect, text, namespaces in pages(reader):
                stats.pages += 1
                if ns != 0 or not title:
                    continue
                title = normalise_title(title)
                key = title.encode("utf-8")
                if redirect is not None:
                    target = link_target(redirect, namespaces)
                    if target is None:
                        continue
                    stats.redirects += 1
                    batch.put(key, _REDIRECT + target.encode("utf-8"))
                    builder.add(strip_qualifier(title), target, 1)
                    continue
                if _DISAMBIG.search(text):
                    stats.disambiguation += 1
                    batch.put(key, _DISAMBIG_PAGE)
                else:
                    stats.articles += 1
                    batch.put(key, _ARTICLE)
                    builder.add(strip_qualifier(title), title, 1)
                for m in _LINK.finditer(text):
                    target = link_target(m.group(1), namespaces)
                    if target is None:
                        stats.skipped_links += 1
                        continue
                    anchor = anchor_text(m.group(2) if m.group(2) else m.group(1))
                    stats.links += 1
                    builder.add(anchor, target, 1)
                if stats.pages % 10_000 == 0:
                    db.write(batch)
                    batch = WriteBatch(raw_mode=True)
        db.write(batch)
        if stats.articles == 0:
            raise DumpError(f"{dump}: no articles (namespace 0) found in the dump")

        @lru_cache(maxsize=1_000_000)
        def resolve(title: str) -> str | None:
            for _ in range(4):  # article, or up to 3 redirect hops
                kind = db.get(title.encode("utf-8"))
                if kind is None or kind == _DISAMBIG_PAGE:
                    return None  # red link, or a disambiguation page: no entity
                if kind == _ARTICLE:
                    return title
                title = kind[1:].decode("utf-8")
            return None

        builder.resolve = resolve
        meta = builder.finish(extra_meta={"dump": str(dump), **stats.__dict__,
                                          "licence": "CC BY-SA (Wikipedia text)"})
    finally:
        db.close()
        builder.cleanup()
    return meta
