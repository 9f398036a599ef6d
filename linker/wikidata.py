"""Alias table from a Wikidata JSON dump (`latest-all.json[.bz2|.gz]`: one entity per
line inside a JSON array; plain JSON lines work too), labels and aliases in one
selectable language.

Wikidata has no anchor counts, so an entity's number of sitelinks (Wikipedia
editions covering it) stands in for popularity: every label or alias row of an
entity counts 1 + sitelinks, and p(e|m) favours the better-known entity
("Paris" -> the city, not one of the small towns named Paris).

Entity titles must be unique and should agree with Wikipedia-built tables, so the
title is the entity's `<lang>wiki` sitelink title (unique per wiki). Entities without
one are skipped unless `include_unlinked`, which titles them "<label> (<QID>)".
One streaming pass; a malformed or truncated line is an error naming its line
number and byte offset.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linker.dumps import DumpReader
from linker.errors import DumpError
from linker.normalize import strip_qualifier

logger = logging.getLogger(__name__)

SOURCE = "wikidata"


@dataclass
class WikidataStats:
    entities: int = 0
    used: int = 0
    unlinked_skipped: int = 0
    aliases: int = 0


def entities(
    reader: DumpReader, on_bad: Callable[[str, str], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Entity objects of the dump; DumpError names the line and byte of a bad one.

    With `on_bad(reason, where)` a bad line is reported there and skipped instead (the
    knowledge-graph builder counts them; the alias table must not be built from a
    dump it cannot fully read, so it keeps the error).
    """
    line_no = 0
    while True:
        offset = reader.consumed
        raw = reader.readline()
        if not raw:
            return
        line_no += 1
        text = raw.strip()
        if text in (b"", b"[", b"]"):
            continue
        if text.endswith(b","):
            text = text[:-1]
        where = f"{reader.path}: line {line_no} (uncompressed byte {offset})"
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            reason = "truncated line" if not raw.endswith(b"\n") else "not a JSON object"
            if on_bad is not None:
                on_bad(reason, where)
                continue
            raise DumpError(
                f"{reader.path}: {reason} at line {line_no} (uncompressed byte {offset}): "
                f"{str(exc).splitlines()[0]}"
            ) from None
        if not isinstance(obj, dict):
            if on_bad is not None:
                on_bad("not an entity object", where)
                continue
            raise DumpError(f"{where} is not an entity object")
        yield obj


def entity_rows(
    entity: dict[str, Any], lang: str, *, include_unlinked: bool = False
) -> tuple[str, list[str], int] | None:
    """(title, surface forms, count) of one entity, or None when it is skipped."""
    qid = entity.get("id")
    if not isinstance(qid, str):
        return None
    label = ((entity.get("labels") or {}).get(lang) or {}).get("value")
    sitelinks = entity.get("sitelinks") or {}
    site = sitelinks.get(f"{lang}wiki") or {}
    title = site.get("title") if isinstance(site, dict) else None
    if not title:
        if not include_unlinked or not label:
            return None
        title = f"{label} ({qid})"
    forms = [label] if label else []
    for alias in (entity.get("aliases") or {}).get(lang) or []:
        value = alias.get("value") if isinstance(alias, dict) else None
        if value:
            forms.append(value)
    forms.append(strip_qualifier(title))
    return title, forms, 1 + len(sitelinks)


def build_wikidata(
    dump: str | os.PathLike[str], out: Path, *, lang: str = "en",
    include_unlinked: bool = False, progress: bool = False, spill_rows: int = 2_000_000,
    max_candidates: int = 16,
) -> dict[str, Any]:
    """Build an alias table at `out` from a Wikidata JSON dump; returns its metadata."""
    from linker.builder import TableBuilder

    stats = WikidataStats()
    builder = TableBuilder(
        out, source=SOURCE, spill_rows=spill_rows, max_candidates=max_candidates,
        progress=progress,
    )
    try:
        with DumpReader(dump, progress="reading dump" if progress else None) as reader:
            for entity in entities(reader):
                stats.entities += 1
                rows = entity_rows(entity, lang, include_unlinked=include_unlinked)
                if rows is None:
                    stats.unlinked_skipped += 1
                    continue
                title, forms, count = rows
                stats.used += 1
                stats.aliases += len(forms)
                for form in dict.fromkeys(forms):  # each surface form once per entity
                    builder.add(form, title, count)
        if stats.used == 0:
            raise DumpError(f"{dump}: no entity with a {lang!r} label and {lang}wiki sitelink")
        meta = builder.finish(extra_meta={"dump": str(dump), "lang": lang, **stats.__dict__,
                                          "licence": "CC0 (Wikidata)"})
    finally:
        builder.cleanup()
    return meta
