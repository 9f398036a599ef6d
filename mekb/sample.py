"""The bundled sample: MovieLens-100k (from the `recbole` package) as MeKB-Stream events.

MovieLens is not redistributed by this project: the events are generated on
the user's machine from the copy that PyPI's `recbole` installs.

Cross-domain split by genre (documented in docs/architecture.md): a movie whose
*first* listed genre is in ACTION_GENRES is in domain `action`, every other
movie is in domain `drama`. Both domains share users, so users who rated only
`drama` movies are zero-shot users of `action`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ACTION_GENRES = frozenset(
    {"Action", "Adventure", "Sci-Fi", "Thriller", "War", "Western", "Crime", "Horror"}
)
DOMAINS = ("action", "drama")


class SampleUnavailable(RuntimeError):
    pass


def ml100k_dir() -> Path:
    try:
        import recbole
    except ImportError:
        raise SampleUnavailable(
            "the sample data comes from the `recbole` package: pip install --no-deps recbole"
        ) from None
    path = Path(recbole.__file__).parent / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        raise SampleUnavailable(f"MovieLens-100k files missing under {path}")
    return path


@dataclass(frozen=True)
class Movie:
    item_id: str
    title: str
    year: str
    genres: tuple[str, ...]

    @property
    def domain(self) -> str:
        return "action" if self.genres and self.genres[0] in ACTION_GENRES else "drama"


def _atomic_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a RecBole atomic file, header `name:type` reduced to `name`."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        for row in reader:
            yield dict(zip(header, row, strict=False))


def movies(root: Path | None = None) -> dict[str, Movie]:
    root = root or ml100k_dir()
    out = {}
    for row in _atomic_rows(root / "ml-100k.item"):
        genres = tuple(row.get("class", "").split())
        out[row["item_id"]] = Movie(row["item_id"], row["movie_title"], row["release_year"], genres)
    return out


def write_sample(out_dir: Path, *, limit: int | None = None) -> tuple[Path, Path]:
    """Write items.jsonl and interactions.jsonl (time-ordered) and return their paths."""
    root = ml100k_dir()
    catalog = movies(root)
    ratings = sorted(
        _atomic_rows(root / "ml-100k.inter"), key=lambda r: (float(r["timestamp"]), r["user_id"])
    )
    if limit is not None:
        ratings = ratings[:limit]
    out_dir.mkdir(parents=True, exist_ok=True)
    items_path, inter_path = out_dir / "items.jsonl", out_dir / "interactions.jsonl"
    first_ts = float(ratings[0]["timestamp"]) if ratings else 0.0
    with open(items_path, "w", encoding="utf-8") as fh:
        for movie in catalog.values():
            fh.write(json.dumps({
                "item_id": movie.item_id, "domain": movie.domain, "title": movie.title,
                "text": f"{movie.title} ({movie.year}). Genres: {', '.join(movie.genres)}.",
                "categories": list(movie.genres), "ts": first_ts,
            }) + "\n")
    with open(inter_path, "w", encoding="utf-8") as fh:
        for r in ratings:
            rated = catalog.get(r["item_id"])
            if rated is None:
                continue
            fh.write(json.dumps({
                "event_id": f"ml100k-{r['user_id']}-{r['item_id']}",
                "user_id": f"u{r['user_id']}", "item_id": rated.item_id,
                "domain": rated.domain, "action": "rate", "rating": float(r["rating"]),
                "ts": float(r["timestamp"]),
            }) + "\n")
    return items_path, inter_path


REPLAYED = "replayed.json"  # beside interactions.jsonl: how many of its lines were applied


def replayed_lines(interactions: Path) -> int:
    """How many lines of the sample's time-ordered ratings this data directory holds."""
    try:
        return int(json.loads((interactions.parent / REPLAYED).read_text())["lines"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def unreplayed(interactions: Path) -> Path:
    """The ratings of the time-ordered sample not yet applied in this data directory
    (all of them the first time): a second `mekb up` with the same or a smaller --limit
    sends no rating again, a larger one only the newer ratings. (Re-sending them would
    be dropped by event_id only within the per-user dedupe window: a user with more
    ratings than that would have older ones counted twice.)"""
    done = replayed_lines(interactions)
    if done == 0:
        return interactions
    lines = interactions.read_text(encoding="utf-8").splitlines(keepends=True)
    tail = interactions.with_name("interactions.new.jsonl")
    tail.write_text("".join(lines[done:]), encoding="utf-8")
    return tail


def mark_replayed(interactions: Path, lines: int) -> None:
    """Record that the first `lines` lines of `interactions` (the whole sample file) are
    applied: the stream worker's state holds them, so the next run must not send them.
    Call it only with lines the worker made durable: a line marked but never applied is
    lost for good (the next run's embedded broker starts empty)."""
    marker = interactions.parent / REPLAYED
    done = replayed_lines(interactions)
    if lines > done:
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"lines": lines}))
        tmp.replace(marker)
