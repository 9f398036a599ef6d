"""Amazon review data, 2014 (McAuley et al.) and 2018 (Ni et al.) releases.

One domain = one pair of files (reviews + metadata), e.g. Books and Movies_and_TV:

- reviews, both years: JSON lines with `reviewerID`, `asin`, `overall` (1-5) and
  `unixReviewTime` (2018 adds `verified`, `vote`, `style`, ...).
- metadata 2014: one Python dict literal per line (`{'asin': ..., 'title': ...,
  'categories': [['Books', 'Literature']], 'brand': ...}`) — the release was written
  with `str(dict)`, so it is parsed with `ast.literal_eval` (never `eval`). Strict JSON
  lines are accepted too.
- metadata 2018: JSON lines with `asin`, `title`, `category` (flat list), `brand`,
  `description` (list of strings), `main_cat`.

Files may be gzipped (`.gz`). Items without metadata keep their asin as title.
"""

from __future__ import annotations

import ast
import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.data.base import Dataset, DatasetError, Interaction, Item, read_lines

logger = logging.getLogger(__name__)


def _parse_meta_line(line: str, where: str) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        pass
    try:
        value = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError) as exc:
        raise DatasetError(f"{where}: not JSON nor a Python dict literal ({exc})") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected an object")
    return value


def _categories(meta: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    cats = meta.get("category")  # 2018: flat list
    if cats is None:
        cats = [c for path in meta.get("categories") or [] for c in path]  # 2014: paths
    for cat in cats or []:
        cat = html.unescape(str(cat)).strip()
        if cat and cat not in out:
            out.append(cat)
    return tuple(out)


def _text(meta: dict[str, Any]) -> str:
    desc = meta.get("description") or ""
    if isinstance(desc, list):
        desc = " ".join(str(d) for d in desc)
    return html.unescape(str(desc)).strip()[:2000]


def load_amazon(domains: Sequence[tuple[str, Path, Path | None]], name: str = "amazon") -> Dataset:
    """`domains`: (domain name, reviews file, metadata file or None) per domain."""
    items: dict[str, Item] = {}
    interactions: list[Interaction] = []
    for domain, reviews, meta_path in domains:
        if meta_path is not None:
            for path, n, line in read_lines([str(meta_path)]):
                meta = _parse_meta_line(line, f"{path}:{n}")
                asin = str(meta.get("asin") or "").strip()
                if not asin:
                    raise DatasetError(f"{path}:{n}: metadata without asin")
                title = html.unescape(str(meta.get("title") or "")).strip() or asin
                brand = str(meta.get("brand") or "").strip() or None
                items[asin] = Item(asin, domain, title, _text(meta), brand, _categories(meta))
        for path, n, line in read_lines([str(reviews)]):
            try:
                row = json.loads(line)
                user, asin = str(row["reviewerID"]), str(row["asin"])
                rating = float(row["overall"])
                ts = float(row.get("unixReviewTime") or 0.0)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{path}:{n}: bad review line ({exc!r})") from None
            if asin not in items:
                items[asin] = Item(asin, domain, asin)
            elif items[asin].domain != domain:
                # the same asin listed in two domains: keep the first domain (ids are unique)
                continue
            interactions.append(Interaction(user, asin, domain, rating, ts))
    logger.info("amazon: %d items, %d reviews", len(items), len(interactions))
    return Dataset(name, items, interactions)
