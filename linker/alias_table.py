"""The alias table: mention key -> candidate entities with priors p(e|m) = freq(m,e)/freq(m).

On disk a table is a directory:

```
<table>/
  meta.json         format, normalisation version, source, counts, build time
  mentions.marisa   MARISA trie of every mention key (memory-mapped, read-only)
  candidates/       RocksDB (rocksdict, raw mode): mention key -> candidates
```

Why two structures: longest match needs, at every token, "which table keys are
prefixes of the text from here?". The memory-mapped trie answers that in one C
call for all lengths at once (1.6 us per text position on the default table),
where RocksDB needs one point lookup per candidate length (12 us for up to 8
tokens; bench/bench_linker.py, docs/benchmarks.md "Linker"). The trie holds only
keys, so it stays small; candidate lists live in RocksDB, written in constant
memory and opened read-only. Both are shared by any number of worker processes: the
trie through the page cache (mmap), RocksDB through read-only opens (no lock is
taken, several processes open the same table at once).

Keys are produced by `linker.normalize.mention_key` (NFKC, case folding, tokens
joined by single spaces); a table built with another normalisation version is
refused at open.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from linker.base import KB
from linker.errors import LinkerError
from linker.normalize import NORMALISATION_VERSION, mention_key

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_REC = "\x1e"  # between candidates
_FIELD = "\x1f"  # between a candidate's title and count


class AliasTableError(LinkerError):
    """A missing, foreign or damaged alias table (user-fixable: rebuild it)."""


@dataclass(frozen=True)
class Candidate:
    """One entity a mention may refer to."""

    title: str
    count: int  # freq(m, e)
    prior: float  # freq(m, e) / freq(m)

    @property
    def entity_id(self) -> str:
        return f"{KB}:{self.title}"


def encode_candidates(total: int, cands: list[tuple[str, int]]) -> bytes:
    """Value format: `total<RS>title<US>count<RS>title<US>count...` (UTF-8)."""
    parts = [str(total)]
    parts.extend(f"{title}{_FIELD}{count}" for title, count in cands)
    return _REC.join(parts).encode("utf-8")


def decode_candidates(raw: bytes) -> list[Candidate]:
    parts = raw.decode("utf-8").split(_REC)
    total = int(parts[0])
    out = []
    for part in parts[1:]:
        title, _, count = part.rpartition(_FIELD)
        n = int(count)
        out.append(Candidate(title, n, n / total if total else 0.0))
    return out


def _rocks_options(*, create: bool) -> Any:
    from rocksdict import BlockBasedOptions, Cache, Options

    opts = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # misses are the common case of a lookup
    table.set_block_cache(Cache(64 * 1024 * 1024))
    opts.set_block_based_table_factory(table)
    opts.create_if_missing(create)
    opts.set_max_open_files(256)
    return opts


class AliasTable:
    """A read-only alias table. Open with `AliasTable.open(path)`; build small ones
    (e.g. in tests) with `AliasTable.build(path, rows)`."""

    def __init__(self, path: Path, meta: dict[str, Any], trie: Any, db: Any, cache: int) -> None:
        self.path = path
        self.meta = meta
        self._trie = trie
        self._db = db
        self.candidates: Callable[[str], list[Candidate]] = lru_cache(maxsize=cache)(
            self._load_candidates
        )

    # --- building ------------------------------------------------------
    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        rows: Iterable[tuple[str, str, int]],
        *,
        source: str = "rows",
        resolve: Callable[[str], str | None] | None = None,
        max_candidates: int = 16,
        progress: bool = False,
        spill_rows: int = 2_000_000,
        extra_meta: dict[str, Any] | None = None,
    ) -> AliasTable:
        """Build a table at `path` from `(mention, entity_title, count)` rows and open it.

        Example (a tiny real table for a test)::

            table = AliasTable.build(tmp_path / "alias", [
                ("Christopher Nolan", "Christopher Nolan", 10),
                ("Nolan", "Christopher Nolan", 3),
                ("Nolan", "Nolan, Alabama", 1),
            ])
            table.best("nolan").entity_id  # 'kb:Christopher Nolan', prior 0.75

        Mentions are normalised with `mention_key`; rows for the same (mention,
        entity) are summed; `resolve(title)` may map an entity title to its canonical
        title (redirects) or None to drop it. Memory stays bounded by `spill_rows`
        (sorted runs are spilled to disk and merged), and the table is published
        atomically: a crash leaves the previous table (if any) in place, and a rerun
        starts over.
        """
        from linker.builder import TableBuilder

        builder = TableBuilder(
            Path(path), source=source, resolve=resolve, max_candidates=max_candidates,
            spill_rows=spill_rows, progress=progress,
        )
        try:
            builder.add_rows(rows)
            builder.finish(extra_meta=extra_meta)
        finally:
            builder.cleanup()
        return cls.open(path)

    # --- opening -------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, cache: int = 100_000) -> AliasTable:
        """Open read-only; safe in many processes at once."""
        import marisa_trie
        from rocksdict import AccessType, Rdict

        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise AliasTableError(
                f"no alias table at {path} (build one: `mekb linker build-default`)"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AliasTableError(f"unreadable alias table metadata {meta_path}: {exc}") from None
        if meta.get("format") != FORMAT_VERSION:
            raise AliasTableError(
                f"alias table {path} has format {meta.get('format')}, expected {FORMAT_VERSION}"
            )
        if meta.get("normalisation") != NORMALISATION_VERSION:
            raise AliasTableError(
                f"alias table {path} uses normalisation {meta.get('normalisation')}, this "
                f"linker {NORMALISATION_VERSION}: rebuild the table"
            )
        trie = marisa_trie.Trie()
        try:
            trie.mmap(str(path / "mentions.marisa"))
            db = Rdict(
                str(path / "candidates"), _rocks_options(create=False),
                access_type=AccessType.read_only(),
            )
        except Exception as exc:  # marisa/rocksdict raise bare Exceptions on damage
            raise AliasTableError(f"damaged alias table {path}: {exc}") from None
        return cls(path, meta, trie, db, cache)

    def close(self) -> None:
        self.candidates.cache_clear()  # type: ignore[attr-defined]
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> AliasTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- lookups -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._trie)

    def __contains__(self, key: str) -> bool:
        return key in self._trie

    def prefixes(self, text: str) -> list[str]:
        """Table keys that are prefixes of `text` (a run of normalised tokens)."""
        return self._trie.prefixes(text)

    def _load_candidates(self, key: str) -> list[Candidate]:
        if self._db is None:
            raise AliasTableError("alias table is closed")
        raw = self._db.get(key.encode("utf-8"))
        return [] if raw is None else decode_candidates(raw)

    def lookup(self, mention: str) -> list[Candidate]:
        """Candidates of a surface form (normalised here), best prior first."""
        return self.candidates(mention_key(mention))

    def best(self, key: str, *, min_prior: float = 0.0, min_count: int = 1) -> Candidate | None:
        """AT@1: the candidate with the highest prior, if it clears both thresholds."""
        cands = self.candidates(key)
        if not cands:
            return None
        top = cands[0]
        if top.prior < min_prior or top.count < min_count:
            return None
        return top


def publish(staging: Path, target: Path) -> None:
    """Swap a finished staging directory into place (readers of the old one keep their
    open files; new opens see the new table)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{int(time.time())}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
