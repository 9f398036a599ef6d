"""Linker throughput, both mention modes, single process and with n_process.

    nice -n 10 python bench/bench_linker.py [--alias-table DIR] [--items 5000]
        [--ner-items 1000] [--n-process 2] [--repeat 5]

Texts: item descriptions of about 200 characters, made by joining texts of the
labelled set (linker/data/labelled.jsonl) and cutting at a word boundary; every item
also has its title, which the linker links too. Baselines are measured in the same
run and interleaved with the linker's runs (A B A B ...), so that load from other
users of a shared machine hits both alike: the issue's target for dictionary mode
(5,000 items/s per core) and, for NER mode, spaCy's own `nlp.pipe` on the same texts
(full pipeline, and only the NER component - what the linker runs). Figures are
medians of --repeat runs. Single-process rates are given per wall second and per
CPU second of the process (the "per core" rate, robust to a shared machine); with
n_process the wall rate and the rate per CPU second summed over the workers.
Last, the lookup structure: the MARISA trie's one-call prefix search against one
RocksDB point lookup per candidate length (why the table keeps both).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mekb.events import ItemEvent  # noqa: E402
from mekb.settings import Settings  # noqa: E402

TARGET_PER_CORE = 5000.0
TEXT_CHARS = 200


def make_items(n: int) -> list[ItemEvent]:
    rows = [json.loads(line) for line in
            (ROOT / "linker" / "data" / "labelled.jsonl").read_text().splitlines()]
    items = []
    for i in range(n):
        a = rows[i % len(rows)]
        text, k = a["text"], 1
        while len(text) < TEXT_CHARS:
            text += " " + rows[(i * 7 + 3 * k) % len(rows)]["text"]
            k += 1
        cut = text[: TEXT_CHARS + 1].rsplit(" ", 1)[0]
        items.append(ItemEvent(item_id=str(i), domain=a["domain"], title=a["title"], text=cut,
                               ts=0))
    return items


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, tuple[float, float]]:
    """Median (wall s, CPU s of this process) of each function, runs interleaved."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            runs[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for name, rs in runs.items()}


_WORKER_LINKER: Any = None


def _open_worker(table: str) -> None:
    """Pool initializer: each worker opens the table read-only once, like a stream worker."""
    global _WORKER_LINKER
    from linker.factory import build_linker

    _WORKER_LINKER = build_linker(Settings(alias_table=Path(table)))


def _dict_chunk(items: list[ItemEvent]) -> float:
    """Link a chunk in a worker; returns the worker's CPU seconds."""
    c0 = time.process_time()
    _WORKER_LINKER.link_many(items)
    return time.process_time() - c0


def bench_dictionary(settings: Settings, items: list[ItemEvent], args: argparse.Namespace) -> None:
    from linker.factory import alias_table_path, build_linker

    linker = build_linker(settings.model_copy(update={"linker_mode": "dictionary"}))
    linker.link_many(items[:500])  # warm the page cache and the candidate cache
    (wall, cpu), = interleaved({"dict": lambda: linker.link_many(items)}, args.repeat).values()
    linker.close()
    n = len(items)
    print(f"dictionary, 1 process : {n / wall:7.0f} items/s wall, {n / cpu:7.0f} items per "
          f"CPU-s  (target {TARGET_PER_CORE:.0f}/core: ratio {n / cpu / TARGET_PER_CORE:.2f})")
    np_ = args.n_process
    chunks = [items[k::np_] for k in range(np_)]
    table = str(alias_table_path(settings))
    walls, cpus = [], []
    with mp.get_context("spawn").Pool(np_, _open_worker, (table,)) as pool:
        pool.map(_dict_chunk, [items[:500]] * np_)  # warm every worker
        for _ in range(args.repeat):
            w0 = time.perf_counter()
            cpus.append(sum(pool.map(_dict_chunk, chunks)))
            walls.append(time.perf_counter() - w0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(f"dictionary, {np_} processes: {n / wall:7.0f} items/s wall, {n / cpu:7.0f} items per "
          f"CPU-s over the workers (each opens the table read-only)")


def bench_ner(settings: Settings, items: list[ItemEvent], args: argparse.Namespace) -> None:
    import spacy

    from linker.factory import build_linker
    from linker.ner import load_pipeline

    texts = [i.text or "" for i in items]
    full = spacy.load(settings.spacy_model)
    ner_only = load_pipeline(settings.spacy_model)
    bs = settings.linker_batch_size
    linker = build_linker(settings.model_copy(update={"linker_mode": "ner"}))
    linker.link_many(items[:50])
    res = interleaved({
        "full": lambda: list(full.pipe(texts, batch_size=bs)),
        "ner": lambda: list(ner_only.pipe(texts, batch_size=bs)),
        "linker": lambda: linker.link_many(items),
    }, args.repeat)
    linker.close()
    n = len(items)
    for name, label in (("full", "spaCy nlp.pipe, full pipeline"),
                        ("ner", "spaCy nlp.pipe, NER only     ")):
        wall, cpu = res[name]
        print(f"{label}: {n / wall:6.0f} texts/s wall, {n / cpu:6.0f} per CPU-s")
    wall, cpu = res["linker"]
    print(f"ner linker, 1 process        : {n / wall:6.0f} items/s wall, {n / cpu:6.0f} per CPU-s"
          f"  (ratio vs full nlp.pipe {res['full'][1] / cpu:.2f}, vs NER-only nlp.pipe "
          f"{res['ner'][1] / cpu:.2f}, on CPU time)")
    np_ = args.n_process
    linker = build_linker(settings.model_copy(
        update={"linker_mode": "ner", "linker_n_process": np_}))
    res = interleaved({
        "ner": lambda: list(ner_only.pipe(texts, batch_size=bs, n_process=np_)),
        "linker": lambda: linker.link_many(items),
    }, args.repeat)
    linker.close()
    print(f"ner linker, n_process={np_}    : {n / res['linker'][0]:6.0f} items/s wall  (NER-only "
          f"nlp.pipe n_process={np_}: {n / res['ner'][0]:.0f}/s; ratio "
          f"{res['ner'][0] / res['linker'][0]:.2f})")


def bench_lookups(settings: Settings, items: list[ItemEvent], repeat: int) -> None:
    """One trie prefix call per text position against a RocksDB get per length."""
    from linker.alias_table import AliasTable
    from linker.factory import alias_table_path
    from linker.normalize import tokens

    suffixes = []
    for item in items[:1000]:
        toks = tokens(item.text or "")
        suffixes.extend(" ".join(toks[i : i + 8]) for i in range(len(toks)))
    with AliasTable.open(alias_table_path(settings)) as table:
        trie, db = table._trie, table._db  # the two structures themselves, no cache

        def by_trie() -> int:  # keys ending on a token boundary, as the matcher keeps
            return sum(1 for s in suffixes for f in trie.prefixes(s)
                       if len(f) == len(s) or s[len(f)] == " ")

        def by_rocksdb() -> int:
            found = 0
            for s in suffixes:
                words = s.split(" ")
                for n in range(1, len(words) + 1):
                    found += db.get(" ".join(words[:n]).encode("utf-8")) is not None
            return found

        assert by_trie() == by_rocksdb()
        res = interleaved({"trie": by_trie, "rocksdb": by_rocksdb}, repeat)
    us = {k: v[1] / len(suffixes) * 1e6 for k, v in res.items()}
    print(f"lookup per text position (up to 8 tokens): trie.prefixes {us['trie']:.2f} us, "
          f"RocksDB get per length {us['rocksdb']:.2f} us (CPU, {len(suffixes)} positions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alias-table", type=Path)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--ner-items", type=int, default=1000)
    ap.add_argument("--n-process", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from linker.factory import alias_table_path

    settings = Settings() if args.alias_table is None else Settings(alias_table=args.alias_table)
    items = make_items(args.items)
    mean_len = statistics.mean(len(i.text or "") for i in items)
    print(f"alias table {alias_table_path(settings)}; {len(items)} items, descriptions of "
          f"{mean_len:.0f} chars on average (+ titles); medians of {args.repeat} runs")
    bench_dictionary(settings, items, args)
    bench_ner(settings, items[: args.ner_items], args)
    bench_lookups(settings, items, args.repeat)


if __name__ == "__main__":
    main()
