"""Constant-memory alias-table construction: aggregate, spill sorted runs, merge, publish.

Rows `(mention, entity_title, count)` are summed per (mention key, title) in a
bounded dict; when it holds `spill_rows` pairs it is written to a sorted run file in
the staging directory. `finish()` k-way merges the runs (heapq.merge, streaming), so
every mention's rows arrive together; it resolves titles (redirects), computes
freq(m) and the priors, writes candidates to RocksDB in key order and the keys to a
MARISA trie, then renames the staging directory into place. Memory is bounded by
`spill_rows` plus the trie's key set, never by the size of the dump.

A failed or interrupted build leaves only a `.<name>.building-*` directory, which the
next build of the same table removes: builds are restartable, not resumable.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from linker.alias_table import (
    FORMAT_VERSION,
    _rocks_options,
    encode_candidates,
    publish,
)
from linker.normalize import NORMALISATION_VERSION, mention_key

logger = logging.getLogger(__name__)

_BAD_TITLE_CHARS = str.maketrans({c: " " for c in "\t\n\r\x1e\x1f"})


def clean_title(title: str) -> str:
    """Entity titles: control separators removed, whitespace collapsed."""
    return " ".join(title.translate(_BAD_TITLE_CHARS).split())


class TableBuilder:
    def __init__(
        self,
        target: Path,
        *,
        source: str,
        resolve: Callable[[str], str | None] | None = None,
        max_candidates: int = 16,
        spill_rows: int = 2_000_000,
        progress: bool = False,
    ) -> None:
        self.target = target
        self.source = source
        self.resolve = resolve
        self.max_candidates = max_candidates
        self.spill_rows = spill_rows
        self.progress = progress
        target.parent.mkdir(parents=True, exist_ok=True)
        for pattern in (f".{target.name}.building-*", f".{target.name}.scratch-*"):
            for stale in target.parent.glob(pattern):
                logger.info("removing the leftovers of an interrupted build: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self.staging = target.parent / f".{target.name}.building-{os.getpid()}"
        self.staging.mkdir()
        self._scratch = target.parent / f".{target.name}.scratch-{os.getpid()}"
        self._pending: dict[tuple[str, str], int] = {}
        self._runs: list[Path] = []
        self.rows_in = 0
        self.rows_dropped = 0
        self.started = time.time()

    def scratch(self, name: str) -> Path:
        """A private working path (e.g. a temporary RocksDB) removed by `cleanup()`."""
        self._scratch.mkdir(exist_ok=True)
        return self._scratch / name

    # --- aggregation ---------------------------------------------------
    def add(self, mention: str, title: str, count: int = 1) -> None:
        key = mention_key(mention)
        title = clean_title(title)
        self.rows_in += 1
        if not key or not title or count <= 0:
            self.rows_dropped += 1
            return
        pair = (key, title)
        self._pending[pair] = self._pending.get(pair, 0) + count
        if len(self._pending) >= self.spill_rows:
            self._spill()

    def add_rows(self, rows: Iterable[tuple[str, str, int]]) -> None:
        for mention, title, count in rows:
            self.add(mention, title, count)

    def _spill(self) -> None:
        if not self._pending:
            return
        path = self.staging / f"run-{len(self._runs):05d}.tsv"
        with open(path, "w", encoding="utf-8") as fh:
            for (key, title), count in sorted(self._pending.items()):
                fh.write(f"{key}\t{title}\t{count}\n")
        logger.debug("spilled %d pairs to %s", len(self._pending), path)
        self._runs.append(path)
        self._pending = {}

    # --- merging -------------------------------------------------------
    def _merged(
        self, files: Sequence[IO[str]]
    ) -> Iterator[tuple[str, list[tuple[str, int]]]]:
        """(key, [(title, count), ...]) per mention key, in key order."""
        current: str | None = None
        rows: list[tuple[str, int]] = []
        for line in heapq.merge(*files):
            key, title, count = line.rstrip("\n").split("\t")
            if key != current:
                if current is not None:
                    yield current, rows
                current, rows = key, []
            rows.append((title, int(count)))
        if current is not None:
            yield current, rows

    def finish(self, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        import marisa_trie
        from rocksdict import Rdict, WriteBatch

        self._spill()
        files = [open(p, encoding="utf-8") for p in self._runs]  # noqa: SIM115
        keys_path = self.staging / "keys.txt"
        n_keys = n_links = n_unresolved = 0
        db = Rdict(str(self.staging / "candidates"), _rocks_options(create=True))
        bar = _bar(self.progress, "writing alias table", unit=" mentions")
        try:
            batch = WriteBatch(raw_mode=True)
            with open(keys_path, "w", encoding="utf-8") as keys_out:
                for key, rows in self._merged(files):
                    per_title: dict[str, int] = {}
                    for title, count in rows:
                        resolved = self.resolve(title) if self.resolve else title
                        if resolved is None:
                            n_unresolved += count
                            continue
                        per_title[resolved] = per_title.get(resolved, 0) + count
                    if not per_title:
                        continue
                    total = sum(per_title.values())
                    cands = sorted(per_title.items(), key=lambda tc: (-tc[1], tc[0]))
                    batch.put(
                        key.encode("utf-8"),
                        encode_candidates(total, cands[: self.max_candidates]),
                    )
                    keys_out.write(key + "\n")
                    n_keys += 1
                    n_links += total
                    if n_keys % 50_000 == 0:
                        db.write(batch)
                        batch = WriteBatch(raw_mode=True)
                        bar.update(50_000)
            db.write(batch)
            bar.update(n_keys % 50_000)
            db.flush()
            db.compact_range(None, None)  # one sorted level: fewer files to open per worker
        finally:
            bar.close()
            db.close()
            for fh in files:
                fh.close()
        for run in self._runs:
            run.unlink()
        with open(keys_path, encoding="utf-8") as fh:
            trie = marisa_trie.Trie(line.rstrip("\n") for line in fh)
        trie.save(str(self.staging / "mentions.marisa"))
        del trie
        keys_path.unlink()
        meta = {
            "format": FORMAT_VERSION,
            "normalisation": NORMALISATION_VERSION,
            "source": self.source,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - self.started, 1),
            "mentions": n_keys,
            "links": n_links,
            "rows": self.rows_in,
            "rows_dropped": self.rows_dropped,
            "unresolved": n_unresolved,
            "max_candidates": self.max_candidates,
            **(extra_meta or {}),
        }
        (self.staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        publish(self.staging, self.target)
        logger.info(
            "alias table %s: %d mentions, %d links from %d rows in %.1fs",
            self.target, n_keys, n_links, self.rows_in, meta["build_seconds"],
        )
        return meta

    def cleanup(self) -> None:
        """Remove the scratch space, and the staging directory if it was not published."""
        for path in (self.staging, self._scratch):
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, desc: str, **kwargs: Any) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(desc=desc, **kwargs)
