"""Generic interactions + items in CSV or JSON lines (by file suffix; `.gz` allowed).

interactions: `user_id, item_id[, domain][, rating][, ts]` (rating empty = implicit)
items:        `item_id, domain[, title][, text][, brand][, categories]`
              (categories: a JSON list, or `|`-separated in CSV)
The same field names as the `interactions`/`items` topics (mekb/events.py), so a
`mekb sample` export loads as is.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.data.base import Dataset, DatasetError, Interaction, Item, read_lines


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if suffixes and suffixes[-1] in (".jsonl", ".json", ".ndjson"):
        for p, n, line in read_lines([str(path)]):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{p}:{n}: invalid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{p}:{n}: expected an object")
            yield f"{p}:{n}", row
        return
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for n, row in enumerate(reader, 2):
            yield f"{path}:{n}", dict(row)


def _categories(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        return tuple(str(v) for v in value if str(v).strip())
    text = str(value)
    if text.startswith("["):
        try:
            return tuple(str(v) for v in json.loads(text))
        except json.JSONDecodeError:
            pass
    return tuple(v.strip() for v in text.split("|") if v.strip())


def load_generic(interactions: Path, items: Path | None = None, name: str = "generic") -> Dataset:
    catalog: dict[str, Item] = {}
    if items is not None:
        for where, row in _rows(Path(items)):
            try:
                iid, domain = str(row["item_id"]), str(row["domain"])
            except KeyError as exc:
                raise DatasetError(f"{where}: missing field {exc}") from None
            catalog[iid] = Item(
                iid, domain, str(row.get("title") or iid), str(row.get("text") or ""),
                str(row.get("brand") or "") or None, _categories(row.get("categories")),
            )
    out: list[Interaction] = []
    for where, row in _rows(Path(interactions)):
        try:
            uid, iid = str(row["user_id"]), str(row["item_id"])
            rating = row.get("rating")
            rating = float(rating) if rating not in (None, "") else None
            ts = float(row.get("ts") or 0.0)
        except (KeyError, ValueError, TypeError) as exc:
            raise DatasetError(f"{where}: bad interaction ({exc!r})") from None
        item = catalog.get(iid)
        domain = str(row.get("domain") or (item.domain if item else ""))
        if not domain:
            raise DatasetError(f"{where}: no domain for item {iid} (add a domain column or items)")
        if item is None:
            catalog[iid] = Item(iid, domain, iid)
        out.append(Interaction(uid, iid, domain, rating, ts))
    return Dataset(name, catalog, out)
