"""Precision/recall of entity linking against the labelled set, for both mention modes.

    python bench/linker_quality.py [--alias-table DIR] [--labelled FILE] [--modes dictionary,ner]

The labelled set (linker/data/labelled.jsonl) has 104 item texts (36 movies, 34 books,
34 music) with the knowledge-base entities a reader would link, written as Wikipedia
titles. A predicted kb entity counts as correct when its title equals a gold title
after mention normalisation (NFKC, case folding, punctuation dropped), because the
default table's titles are title-cased reconstructions of lowercased DBpedia titles
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


def load(path: Path) -> tuple[list[ItemEvent], list[set[str]]]:
    items, gold = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        items.append(ItemEvent(item_id=row["item_id"], domain=row["domain"], title=row["title"],
                               text=row["text"], ts=0))
        gold.append({mention_key(t) for t in row["entities"]})
    return items, gold


def score(settings: Settings, items: list[ItemEvent], gold: list[set[str]]) -> dict[str, object]:
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
    args = ap.parse_args()
    base = Settings() if args.alias_table is None else Settings(alias_table=args.alias_table)
    if args.alias_table is None:
        from linker.default import ensure_default_table

        ensure_default_table(base)
    items, gold = load(args.labelled)
    print(f"labelled set: {len(items)} items, {sum(map(len, gold))} gold entities")
    for mode in args.modes.split(","):
        res = score(base.model_copy(update={"linker_mode": mode}), items, gold)
        errs = res.pop("errors")
        print(f"{mode:>10}: precision {res['precision']:.3f}  recall {res['recall']:.3f}  "
              f"F1 {res['f1']:.3f}  (tp {res['tp']}, fp {res['fp']}, fn {res['fn']}; "
              f"{res['mentions']} mentions, {res['unlinked']} unlinked)")
        print(f"{'':>12}per domain: {json.dumps(res['per_domain'])}")
        if args.show_errors:
            for item_id, extra, missed in errs:  # type: ignore[union-attr]
                print(f"{'':>12}{item_id}: extra {extra} missed {missed}")


if __name__ == "__main__":
    main()
