"""Alias table, normalisation, dictionary mode, domain entities and the factory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from linker import AliasTable, build_linker
from linker.alias_table import AliasTableError
from linker.dictionary import DictionaryLinker
from linker.domain import Weights
from linker.normalize import clean_item_title, mention_key, readable_title
from mekb.events import ItemEvent
from mekb.settings import Settings

ROWS = [
    ("Christopher Nolan", "Christopher Nolan", 10),
    ("Nolan", "Christopher Nolan", 3),
    ("Nolan", "Nolan, Alabama", 1),
    ("Inception", "Inception", 5),
    ("Leonardo DiCaprio", "Leonardo DiCaprio", 4),
    ("DiCaprio", "Leonardo DiCaprio", 2),
    ("The", "The", 3),
    ("Star Wars", "Star Wars", 7),
    ("Star", "Star", 9),
    ("Wars", "War", 1),
    ("Spider-Man", "Spider-Man", 2),
    ("directed", "Directed (album)", 1),
    ("1995", "1995", 5),
    ("北京", "北京市", 3),
    ("北京大学", "北京大学", 2),
    ("大学", "大学", 1),
]


@pytest.fixture
def table(tmp_path: Path) -> AliasTable:
    t = AliasTable.build(tmp_path / "alias", ROWS)
    yield t
    t.close()


def item(text: str | None = None, title: str = "Something", **kw: object) -> ItemEvent:
    return ItemEvent(item_id="i1", domain="movies", title=title, text=text, ts=0, **kw)


def test_normalisation_is_nfkc_casefold_and_tokens() -> None:
    assert mention_key("Spider-Man") == mention_key("SPIDER_MAN") == "spider man"
    assert mention_key("ｆｉｌｍ  Noir") == "film noir"  # full-width + whitespace
    assert mention_key("Straße") == "strasse"
    assert mention_key("Björk Guðmundsdóttir") == "bjork guðmundsdottir"  # accents folded
    assert mention_key("Secker & Warburg") == mention_key("Secker and Warburg")
    assert mention_key("हिन्दी") == "हिन्दी"  # marks of other scripts are kept
    assert mention_key("北京大学") == "北 京 大 学"  # no-space scripts: one char per token
    assert mention_key(" ... ") == ""


def test_priors_are_count_over_mention_frequency(table: AliasTable) -> None:
    cands = table.lookup("NOLAN")
    assert [(c.title, c.count) for c in cands] == [
        ("Christopher Nolan", 3), ("Nolan, Alabama", 1)
    ]
    assert cands[0].prior == pytest.approx(0.75)
    assert cands[0].entity_id == "kb:Christopher Nolan"
    assert table.best("nolan", min_prior=0.8) is None
    assert table.best("nolan", min_count=4) is None
    assert table.best("unknown") is None
    assert table.meta["mentions"] == len(table)


def test_rows_for_the_same_pair_are_summed(tmp_path: Path) -> None:
    t = AliasTable.build(tmp_path / "a", [("X", "X", 1), ("x", "X", 2), ("X", "Y", 1)],
                         spill_rows=1)  # spill after every pair: the merge must sum
    assert [(c.title, c.count) for c in t.lookup("x")] == [("X", 3), ("Y", 1)]
    t.close()


def test_dictionary_longest_match_and_filters(table: AliasTable) -> None:
    linker = DictionaryLinker(table, weights=Weights(product=0))
    ents = linker.link(item(
        "Inception, directed by Christopher Nolan, starring Leonardo DiCaprio. "
        "The Star Wars saga and 1995 and spider-man"
    ))
    ids = [e.entity_id for e in ents]
    # longest match: "Star Wars" not "Star" + "Wars"; "Christopher Nolan" not "Nolan"
    assert ids == ["kb:Inception", "kb:Christopher Nolan", "kb:Leonardo DiCaprio",
                   "kb:Star Wars"]
    # stop word "The", number "1995", lowercase common word "directed" and
    # lowercase "spider-man" in cased text stay unlinked
    assert all(e.weight == 1.0 for e in ents)
    assert linker.stats.mentions == 4 and linker.stats.unlinked == 0


def test_lowercase_text_links_lowercase_mentions(table: AliasTable) -> None:
    ents = DictionaryLinker(table, weights=Weights(product=0)).link(item("star wars by nolan"))
    assert [e.entity_id for e in ents] == ["kb:Star Wars", "kb:Christopher Nolan"]


def test_language_agnostic_longest_match(table: AliasTable) -> None:
    linker = DictionaryLinker(table, weights=Weights(product=0))
    ents = linker.link(item("我在北京大学读书，北京很大"))
    assert [e.entity_id for e in ents] == ["kb:北京大学", "kb:北京市"]


def test_min_prior_threshold_counts_unlinked(table: AliasTable) -> None:
    linker = DictionaryLinker(table, weights=Weights(product=0), min_prior=0.9)
    ents = linker.link(item("Nolan and Inception"))
    assert [e.entity_id for e in ents] == ["kb:Inception"]
    assert (linker.stats.mentions, linker.stats.linked, linker.stats.unlinked) == (2, 1, 1)


def test_domain_entities_are_namespaced_and_weighted(table: AliasTable) -> None:
    linker = DictionaryLinker(table)
    ents = linker.link(item(title="Inception (2010)", brand="Star", categories=["Sci-Fi", "Star"]))
    got = {(e.entity_id, e.title, e.weight) for e in ents}
    assert got == {
        ("kb:Inception", "Inception", 1.0),
        ("brand:Star", "Star", 0.5),
        ("category:Sci-Fi", "Sci-Fi", 0.3),
        ("category:Star", "Star", 0.3),
        ("product:i1", "Inception (2010)", 0.1),
    }
    heavy = DictionaryLinker(table, weights=Weights(brand=0.7, category=0, product=0))
    assert {e.entity_id: e.weight for e in heavy.link(item(brand="Ace", categories=["X"]))} == {
        "brand:Ace": 0.7
    }


def test_catalogue_titles_are_cleaned() -> None:
    assert clean_item_title("Usual Suspects, The (1995)") == "The Usual Suspects"
    assert clean_item_title("Toy Story (1995)") == "Toy Story"
    assert clean_item_title("Seven (Se7en) (1995)") == "Seven (Se7en)"
    assert clean_item_title("City of Lost Children, The (1995)") == "The City of Lost Children"


def test_readable_titles_are_title_case_and_injective() -> None:
    assert readable_title("the_usual_suspects") == "The Usual Suspects"
    assert readable_title("spider-man") == "Spider-Man"
    assert readable_title("rocky_ii") == "Rocky II"
    assert readable_title("lord_of_the_rings") == "Lord of the Rings"
    assert readable_title("j._k._rowling") == "J. K. Rowling"
    inputs = ["ısland", "island", "straße", "strasse"]
    assert len({readable_title(x) for x in inputs}) == len(inputs)


def test_factory_builds_dictionary_linker(table: AliasTable, tmp_path: Path) -> None:
    settings = Settings(alias_table=table.path, linker_weight_category=0.2)
    linker = build_linker(settings)
    try:
        assert isinstance(linker, DictionaryLinker)
        ents = linker.link_many([item("Christopher Nolan", categories=["Drama"])])[0]
        assert ("category:Drama", 0.2) in {(e.entity_id, e.weight) for e in ents}
    finally:
        linker.close()
    default = Settings(data_dir=tmp_path / "nowhere")
    with pytest.raises(AliasTableError, match="build-default"):
        build_linker(default)


def test_rebuild_replaces_table_atomically(tmp_path: Path) -> None:
    path = tmp_path / "alias"
    old = AliasTable.build(path, [("A b", "Old", 1)])
    new = AliasTable.build(path, [("A b", "New", 1)])
    assert new.lookup("a b")[0].title == "New"
    assert old.lookup("a b")[0].title == "Old"  # an open reader keeps its files
    assert [p.name for p in tmp_path.iterdir()] == ["alias"]  # no staging leftovers
    old.close()
    new.close()


def test_foreign_or_damaged_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alias"
    AliasTable.build(path, [("A", "A", 1)]).close()
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "normalisation": 99}))
    with pytest.raises(AliasTableError, match="normalisation"):
        AliasTable.open(path)


CASE_ROWS = [
    ("Rome", "Rome", 5),
    ("Ancient Rome", "Ancient Rome", 3),
    ("Han dynasty", "Han Dynasty", 2),
    ("Yorkshire", "Yorkshire", 4),
    ("Yorkshire moors", "North York Moors", 1),
    ("directed", "Director", 2),
    ("genres", "Genre", 2),
    ("Beethoven", "Ludwig van Beethoven", 6),
    ("Ludwig van Beethoven", "Ludwig van Beethoven", 6),
    ("Inception", "Inception", 5),
    ("Leonardo da Vinci", "Leonardo da Vinci", 5),
]


@pytest.fixture
def case_table(tmp_path: Path) -> AliasTable:
    t = AliasTable.build(tmp_path / "case", CASE_ROWS)
    yield t
    t.close()


def kb_ids(table: AliasTable, text: str, title: str = "Something") -> list[str]:
    linker = DictionaryLinker(table, weights=Weights(product=0))
    return [e.entity_id for e in linker.link(item(text, title=title))]


def test_lowercase_content_words_are_not_part_of_a_name(case_table: AliasTable) -> None:
    # "ancient" is lowercase: the name is "Rome"; "moors" likewise, and "Yorkshire
    # moors" is only an alias, so "Yorkshire" links
    assert kb_ids(case_table, "A film set in ancient Rome.") == ["kb:Rome"]
    assert kb_ids(case_table, "It is set on the Yorkshire moors.") == ["kb:Yorkshire"]
    # a lowercase word after a capitalised head is kept when it is the entity's title
    assert kb_ids(case_table, "It is set during the Han dynasty.") == ["kb:Han Dynasty"]
    # name particles stay inside the name
    assert kb_ids(case_table, "A portrait by Leonardo da Vinci.") == ["kb:Leonardo da Vinci"]


def test_sentence_start_needs_a_name_not_a_variant(case_table: AliasTable) -> None:
    text = "Inception (2010). Directed by someone else. Genres: drama and more."
    assert kb_ids(case_table, text) == ["kb:Inception"]  # its own title at the start
    # a surname of the entity's title is a name even at the start of a sentence
    assert kb_ids(case_table, "Beethoven's last work, in a new recording.") == [
        "kb:Ludwig van Beethoven"
    ]
    # mid-sentence, capitals are evidence: the variant links
    assert kb_ids(case_table, "It was Directed and Genres all along.") == [
        "kb:Director", "kb:Genre"
    ]
    # a sentence end makes running text even with every word capitalised
    assert kb_ids(case_table, "Directed by Ludwig van Beethoven.") == [
        "kb:Ludwig van Beethoven"
    ]
    # titles and headlines (every word capitalised) are not running text
    assert kb_ids(case_table, "Directed", title="Directed") == ["kb:Director"]


def test_sentence_start_helper() -> None:
    from linker.matching import at_sentence_start

    text = 'Fine. "Genres" here, and Rome'
    assert at_sentence_start(text, 0)
    assert at_sentence_start(text, text.index("Genres"))
    assert not at_sentence_start(text, text.index("Rome"))


def test_labelled_quality_set_is_well_formed() -> None:
    from collections import Counter

    path = Path(__file__).parents[2] / "linker" / "data" / "labelled.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 100
    assert len({r["item_id"] for r in rows}) == len(rows)
    domains = Counter(r["domain"] for r in rows)
    assert set(domains) == {"movies", "books", "music"} and min(domains.values()) >= 30
    for r in rows:
        gold = {mention_key(t) for t in r["entities"]}
        absent = {mention_key(t) for t in r.get("not_in_default", [])}
        assert r["text"] and gold and len(gold) == len(r["entities"]), r["item_id"]
        assert not gold & absent, r["item_id"]


@pytest.mark.parametrize("text", [
    "Inception, directed by Christopher Nolan (2010).", "Secker & Warburg", "AC/DC's R&B",
    "Guns N' Roses", "x_y&z 12 Monkeys", "J. K. Rowling; St. Louis!",
])
def test_ascii_fast_path_tokenises_like_the_unicode_pattern(text: str) -> None:
    from linker.normalize import _TOKEN, _token_key, spans

    source = text.replace("_", " ")
    want = [(_token_key(m.group()), *m.span()) for m in _TOKEN.finditer(source)]
    assert [(t.key, t.start, t.end) for t in spans(text)[1]] == want
    assert mention_key(text) == " ".join(key for key, _, _ in want)
