"""Builders from real-format dumps (MediaWiki export XML, Wikidata JSON) and their errors."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import pytest

from linker.alias_table import AliasTable
from linker.errors import DumpError
from linker.wikidata import build_wikidata
from linker.wikipedia import build_wikipedia, link_target, normalise_title

DATA = Path(__file__).parents[1] / "data" / "linker"
WIKI = DATA / "enwiki-mini-pages-articles.xml"
WIKIDATA = DATA / "wikidata-mini.json"


def cands(table: AliasTable, mention: str) -> list[tuple[str, int]]:
    return [(c.title, c.count) for c in table.lookup(mention)]


@pytest.mark.parametrize("compress", [None, "bz2"])
def test_wikipedia_anchors_redirects_titles(tmp_path: Path, compress: str | None) -> None:
    dump = WIKI
    if compress == "bz2":
        dump = tmp_path / "enwiki.xml.bz2"
        dump.write_bytes(bz2.compress(WIKI.read_bytes()))
    meta = build_wikipedia(dump, tmp_path / "alias", spill_rows=3)  # many runs to merge
    with AliasTable.open(tmp_path / "alias") as table:
        # title + two [[Inception]] anchors; the category page's link is not counted
        assert cands(table, "Inception") == [("Inception", 3)]
        # anchors: 2 x [[Christopher Nolan|Nolan]], 1 x [[Nolan, Alabama|Nolan]];
        # [[Nolan (surname)|Nolan]] points at a set-index page and is dropped
        assert cands(table, "nolan") == [("Christopher Nolan", 2), ("Nolan, Alabama", 1)]
        assert table.best("nolan").prior == pytest.approx(2 / 3)
        # redirect title and a link through the redirect both resolve to the target
        assert cands(table, "Chris Nolan") == [("Christopher Nolan", 2)]
        # qualifier stripped from titles: "Memento (film)" is mentioned as "Memento"
        assert cands(table, "Memento") == [("Memento (film)", 2)]
        assert cands(table, "science fiction") == [("Science fiction film", 1)]
        assert cands(table, "Titanic") == []  # red link
        assert cands(table, "Zimmer") == []  # red link
        assert cands(table, "Inception poster jpg") == []  # File: namespace
    assert meta["articles"] == 7 and meta["redirects"] == 1 and meta["disambiguation"] == 1
    assert not list(tmp_path.glob(".alias.*"))  # scratch and staging removed


def test_link_targets() -> None:
    ns = frozenset({"file", "category"})
    assert link_target("christopher_nolan#Career", ns) == "Christopher nolan"
    assert link_target("Category:Films", ns) is None
    assert link_target("fr:Inception", ns) is None
    assert link_target(":Category:Films", ns) is None
    assert link_target("Star Wars: A New Hope", ns) == "Star Wars: A New Hope"
    assert normalise_title("  the_matrix ") == "The matrix"


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_bz2_dump_names_the_offset(tmp_path: Path, cut: float) -> None:
    whole = bz2.compress(WIKI.read_bytes())
    dump = tmp_path / "enwiki.xml.bz2"
    dump.write_bytes(whole[: int(len(whole) * cut)])
    with pytest.raises(DumpError, match=r"truncated bzip2 archive: it ends at byte \d+"):
        build_wikipedia(dump, tmp_path / "alias")
    assert not (tmp_path / "alias").exists()
    assert not list(tmp_path.glob(".alias.*"))


def test_truncated_and_malformed_xml_name_line_and_column(tmp_path: Path) -> None:
    text = WIKI.read_text()
    dump = tmp_path / "cut.xml"
    dump.write_text(text[: len(text) // 2])
    with pytest.raises(DumpError, match=r"truncated at line \d+, column \d+"):
        build_wikipedia(dump, tmp_path / "alias")
    bad = tmp_path / "bad.xml"
    bad.write_text(text.replace("<ns>0</ns>\n    <id>3</id>", "<ns>0</nss>\n    <id>3</id>", 1))
    with pytest.raises(DumpError, match=r"malformed XML at line 3\d, column \d+"):
        build_wikipedia(bad, tmp_path / "alias")
    other = tmp_path / "other.xml"
    other.write_text("<rss><channel/></rss>")
    with pytest.raises(DumpError, match="not a MediaWiki export"):
        build_wikipedia(other, tmp_path / "alias")


def test_failed_rebuild_keeps_the_previous_table(tmp_path: Path) -> None:
    build_wikipedia(WIKI, tmp_path / "alias")
    cut = tmp_path / "cut.xml"
    cut.write_text(WIKI.read_text()[:1500])
    with pytest.raises(DumpError):
        build_wikipedia(cut, tmp_path / "alias")
    with AliasTable.open(tmp_path / "alias") as table:
        assert cands(table, "Inception") == [("Inception", 3)]


@pytest.mark.parametrize("compress", [None, "gz", "bz2"])
def test_wikidata_labels_aliases_sitelink_priors(tmp_path: Path, compress: str | None) -> None:
    dump = WIKIDATA
    if compress == "gz":
        dump = tmp_path / "wd.json.gz"
        dump.write_bytes(gzip.compress(WIKIDATA.read_bytes()))
    elif compress == "bz2":
        dump = tmp_path / "wd.json.bz2"
        dump.write_bytes(bz2.compress(WIKIDATA.read_bytes()))
    meta = build_wikidata(dump, tmp_path / "alias")
    with AliasTable.open(tmp_path / "alias") as table:
        # popularity = 1 + sitelinks: 5 for Christopher Nolan, 2 for Nolan, Alabama
        assert cands(table, "Nolan") == [("Christopher Nolan", 5), ("Nolan, Alabama", 2)]
        assert cands(table, "Christopher Edward Nolan") == [("Christopher Nolan", 5)]
        assert cands(table, "Inception (2010 film)") == [("Inception", 4)]
        assert cands(table, "City of Light") == [("Paris", 3)]
        assert cands(table, "Obscure Thing") == []  # no enwiki sitelink
    assert meta["entities"] == 5 and meta["used"] == 4


def test_wikidata_language_and_unlinked(tmp_path: Path) -> None:
    build_wikidata(WIKIDATA, tmp_path / "fr", lang="fr")
    with AliasTable.open(tmp_path / "fr") as table:
        assert cands(table, "Ville Lumière") == [("Paris", 3)]
        assert cands(table, "City of Light") == []
    build_wikidata(WIKIDATA, tmp_path / "all", include_unlinked=True)
    with AliasTable.open(tmp_path / "all") as table:
        assert cands(table, "Obscure Thing") == [("Obscure Thing (Q999999)", 1)]


def test_bad_wikidata_line_names_line_and_byte(tmp_path: Path) -> None:
    lines = WIKIDATA.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.json"
    bad.write_text("".join(lines[:3]) + '{"type":"item", "id": Q1}\n' + "".join(lines[3:]))
    offset = len("".join(lines[:3]).encode())
    with pytest.raises(DumpError, match=rf"not a JSON object at line 4 \(uncompressed byte "
                                        rf"{offset}\)"):
        build_wikidata(bad, tmp_path / "alias")
    cut = tmp_path / "cut.json"
    cut.write_bytes(WIKIDATA.read_bytes()[:700])
    with pytest.raises(DumpError, match=r"truncated line at line 3"):
        build_wikidata(cut, tmp_path / "alias")
    gz = tmp_path / "cut.json.gz"
    gz.write_bytes(gzip.compress(WIKIDATA.read_bytes())[:-30])
    with pytest.raises(DumpError, match=r"truncated gzip archive"):
        build_wikidata(gz, tmp_path / "alias")


def test_missing_dump(tmp_path: Path) -> None:
    with pytest.raises(DumpError, match="cannot open"):
        build_wikidata(tmp_path / "nope.json", tmp_path / "alias")
