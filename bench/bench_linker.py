"""Linker throughput, both mention modes, single process and with n_process.

    nice -n 10 python bench/bench_linker.py [--alias-table DIR] [--items 5000] [--ner-items 1000]

Texts: ~200-character item descriptions made from the labelled set
(linker/data/labelled.jsonl), cut at a word boundary. Baselines measured in the same
run: the issue's target for dictionary mode (5,000 items/s per core) and, for NER
mode, spaCy's own `nlp.pipe` on the same texts with the full pipeline and with only
the NER component (what the linker runs). Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mekb.events import ItemEvent  # noqa: E402
from mekb.settings import Settings  # noqa: E402

TARGET_PER_CORE = 5000.0


def make_items(n: int) -> list[ItemEvent]:
    rows = [json.loads(line) for line in
            (ROOT / "linker" / "data" / "labelled.jsonl").read_text().splitlines()]
    items = []
    for i in range(n):
        a, b = rows[i % len(rows)], rows[(i * 7 + 3) % len(rows)]
        text = f"{a['text']} {b['text']}"
        cut = text[:200].rsplit(" ", 1)[0]
        items.append(ItemEvent(item_id=str(i), domain=a["domain"], title=a["title"], text=cut,
                               ts=0))
    return items


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def _dict_chunk(args: tuple[str, list[ItemEvent]]) -> int:
    from linker.factory import build_linker

    linker = build_linker(Settings(alias_table=Path(args[0])))
    try:
        return sum(len(e) for e in linker.link_many(args[1]))
    finally:
        linker.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alias-table", type=Path)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--ner-items", type=int, default=1000)
    ap.add_argument("--n-process", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from linker.factory import alias_table_path, build_linker
    from linker.ner import load_pipeline

    settings = Settings() if args.alias_table is None else Settings(alias_table=args.alias_table)
    table = alias_table_path(settings)
    items = make_items(args.items)
    mean_len = statistics.mean(len(i.text or "") for i in items)
    print(f"alias table {table}; {len(items)} items, mean text {mean_len:.0f} chars")

    # --- dictionary mode ---
    linker = build_linker(settings.model_copy(update={"linker_mode": "dictionary"}))
    linker.link_many(items[:200])  # warm the page cache and the candidate cache
    t = timed(lambda: linker.link_many(items), args.repeat)
    linker.close()
    dict_1 = len(items) / t
    print(f"dictionary, 1 process : {dict_1:9.0f} items/s  (target {TARGET_PER_CORE:.0f}/core:"
          f" ratio {dict_1 / TARGET_PER_CORE:.2f})")
    chunks = [(str(table), items[k::args.n_process]) for k in range(args.n_process)]
    with mp.get_context("spawn").Pool(args.n_process) as pool:
        pool.map(_dict_chunk, [(str(table), items[:100])] * args.n_process)  # start workers
        t = timed(lambda: pool.map(_dict_chunk, chunks), args.repeat)
    dict_n = len(items) / t
    print(f"dictionary, {args.n_process} processes: {dict_n:9.0f} items/s  (each opens the "
          f"table read-only; {dict_n / args.n_process:.0f}/process)")

    # --- NER mode vs spaCy's own nlp.pipe ---
    ner_items = items[: args.ner_items]
    texts = [i.text or "" for i in ner_items]
    import spacy

    full = spacy.load(settings.spacy_model)
    ner_only = load_pipeline(settings.spacy_model)
    bs = settings.linker_batch_size
    full_t = timed(lambda: list(full.pipe(texts, batch_size=bs)), args.repeat)
    ner_t = timed(lambda: list(ner_only.pipe(texts, batch_size=bs)), args.repeat)
    linker = build_linker(settings.model_copy(update={"linker_mode": "ner"}))
    linker.link_many(ner_items[:50])
    link_t = timed(lambda: linker.link_many(ner_items), args.repeat)
    linker.close()
    n = len(ner_items)
    print(f"spaCy nlp.pipe, full pipeline   : {n / full_t:7.0f} texts/s")
    print(f"spaCy nlp.pipe, NER only        : {n / ner_t:7.0f} texts/s")
    print(f"ner linker, 1 process           : {n / link_t:7.0f} items/s  (ratio vs full "
          f"nlp.pipe {full_t / link_t:.2f}, vs NER-only nlp.pipe {ner_t / link_t:.2f})")
    np_ = args.n_process
    linker = build_linker(settings.model_copy(
        update={"linker_mode": "ner", "linker_n_process": np_}))
    big = ner_items * 2
    link_np = timed(lambda: linker.link_many(big), 1)
    linker.close()
    ner_np = timed(lambda: list(ner_only.pipe([i.text or "" for i in big], batch_size=bs,
                                              n_process=np_)), 1)
    print(f"ner linker, n_process={np_}       : {len(big) / link_np:7.0f} items/s  (NER-only "
          f"nlp.pipe n_process={np_}: {len(big) / ner_np:.0f}/s, ratio {ner_np / link_np:.2f})")


if __name__ == "__main__":
    main()
