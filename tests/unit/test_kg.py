"""Knowledge-graph data (kg/): the wheel's ml-100k .kg/.link, Wikidata JSON lines, the
live graph, malformed rows counted, storage round trip and restriction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kg.graph import KGError, KnowledgeGraph
from kg.live import build_live_kg, dataset_live_kg
from kg.recbole import load_atomic_kg, ml100k_kg
from kg.wikidata import build_wikidata_kg, link_items
from linker.base import LinkedEntity
from streams.catalog import LinkedItem


def test_ml100k_from_the_recbole_wheel() -> None:
    graph, report = ml100k_kg()
    # the wheel's files: 91,631 data rows in .kg, 1,598 in .link, none malformed
    assert report.rows == 91_631 + 1_598 and report.skipped_total == 0
    assert len(graph.triples) == 91_631 and len(graph.relations) == 24
    assert len(graph.item_links) == 1_598
    idx, rel = graph.entity_index(), graph.relation_index()
    # the file's first data row: m.04ctbw8  film.producer.film  m.0bln8
    head = idx["m.04ctbw8"]
    got = {(int(r), int(t)) for r, t in graph.neighbours(head)}
    assert (rel["film.producer.film"], idx["m.0bln8"]) in got
    # a .link row: item 476 -> m.08gjyx
    assert graph.item_links["476"] == (idx["m.08gjyx"],)


def test_atomic_kg_counts_malformed_rows(tmp_path: Path) -> None:
    (tmp_path / "x.kg").write_text(
        "head_id:token\trelation_id:token\ttail_id:token\n"
        "a\tr\tb\n"
        "a\tr\n"  # too few fields
        "b\ts\tc\textra\n"  # too many
        "\tr\tc\n"  # empty head
        "\n"  # blank lines are not rows
        "a\tr\tb\n"  # duplicate
        "c\ts\ta\n"
    )
    (tmp_path / "x.link").write_text("item_id:token\tentity_id:token\ni1\ta\ni2\t\ni3\tzz\n")
    graph, report = load_atomic_kg(tmp_path, "x")
    assert report.rows == 6 + 3
    assert report.skipped == {"2 fields, expected 3": 1, "4 fields, expected 3": 1,
                              "empty id": 2}
    assert report.duplicates == 1 and len(graph.triples) == 2
    assert any(e.startswith(f"{tmp_path / 'x.kg'}:3") for e in report.examples)
    assert graph.item_links == {"i1": (graph.entity_index()["a"],),
                                "i3": (graph.entity_index()["zz"],)}
    with pytest.raises(KGError, match="lacks"):
        (tmp_path / "y.kg").write_text("a:token\tb:token\n")
        load_atomic_kg(tmp_path, "y")


def _entity(qid: str, title: str | None, claims: dict[str, list[object]]) -> str:
    obj: dict[str, object] = {"id": qid, "labels": {"en": {"value": f"label {qid}"}},
                              "claims": claims}
    if title:
        obj["sitelinks"] = {"enwiki": {"title": title}}
    return json.dumps(obj)


def _item_claim(qid: str) -> dict[str, object]:
    return {"mainsnak": {"snaktype": "value",
                         "datavalue": {"type": "wikibase-entityid", "value": {"id": qid}}}}


def test_wikidata_lines(tmp_path: Path) -> None:
    lines = [
        "[",
        _entity("Q1", "Alien (film)", {"P57": [_item_claim("Q2")], "P136": [_item_claim("Q3")],
                                       "P577": [{"mainsnak": {"snaktype": "value", "datavalue": {
                                           "type": "time", "value": {"time": "+1979"}}}}]}) + ",",
        _entity("Q2", "Ridley Scott", {"P31": [_item_claim("Q5"), {"rank": "normal"}]}) + ",",
        '{"id": "Q9", "claims": ',  # not JSON
        json.dumps({"labels": {}}) + ",",  # no id
        _entity("Q3", None, {"P31": [{"mainsnak": {"snaktype": "novalue"}}]}),
        "]",
    ]
    dump = tmp_path / "wd.json"
    dump.write_text("\n".join(lines) + "\n")
    graph, report = build_wikidata_kg(dump)
    idx = graph.entity_index()
    # entities are named as the linker names them; no sitelink -> wd:QID
    assert set(idx) == {"kb:Alien (film)", "kb:Ridley Scott", "wd:Q3", "wd:Q5"}
    triples = {(graph.entities[h], graph.relations[r], graph.entities[t])
               for h, r, t in graph.triples}
    assert triples == {("kb:Alien (film)", "P57", "kb:Ridley Scott"),
                       ("kb:Alien (film)", "P136", "wd:Q3"), ("kb:Ridley Scott", "P31", "wd:Q5")}
    assert report.skipped == {"not a JSON object": 1, "entity without an id": 1,
                              "statement without a mainsnak": 1}
    assert graph.title(idx["wd:Q3"]) == "label Q3"
    # restricted to some heads; then linked to the items the linker found them in
    only, _ = build_wikidata_kg(dump, keep={"kb:Ridley Scott"})
    assert len(only.triples) == 1
    linked = link_items(graph, {"i1": [LinkedEntity("kb:Alien (film)", "Alien (film)", 1.0),
                                       LinkedEntity("brand:X", "X", 0.5)]})
    assert linked.item_links == {"i1": (idx["kb:Alien (film)"],)}


def test_live_graph_from_item_agent_output() -> None:
    a = LinkedItem("a", "books", (("kb:Dune", "Dune", 1.0), ("brand:Ace", "Ace", 0.5),
                                  ("category:SF", "SF", 0.3), ("product:a", "Dune", 0.1)), "d")
    b_old = LinkedItem("b", "books", (("kb:Old", "Old", 1.0),), "d0")
    b_new = LinkedItem("b", "movies", (("kb:Dune", "Dune", 1.0), ("nonamespace", "x", 1.0)), "d1")
    graph, report = build_live_kg([a.encode(), b_old, b"{not json", b_new.encode()])
    assert report.skipped == {"undecodable record (JSONDecodeError)": 1,
                              "entity id 'nonamespace' has no namespace": 1}
    triples = {(graph.entities[h], graph.relations[r], graph.entities[t])
               for h, r, t in graph.triples}
    assert triples == {
        ("product:a", "kb", "kb:Dune"), ("product:a", "brand", "brand:Ace"),
        ("product:a", "category", "category:SF"), ("product:a", "domain", "domain:books"),
        ("product:b", "kb", "kb:Dune"), ("product:b", "domain", "domain:movies"),
    }  # b's later record replaced the earlier one (compacted topic)
    assert graph.entities[graph.item_links["a"][0]] == "product:a"


def test_storage_restrict_and_merge(tmp_path: Path) -> None:
    g = KnowledgeGraph(("a", "b", "c", "d", "e"), ("r", "s"),
                       np.array([[2, 0, 3], [0, 1, 1], [0, 0, 2], [3, 1, 4]]),
                       {"i1": (0,), "i2": (4,)}, {0: "A", 4: "E"})
    back = KnowledgeGraph.load(g.save(tmp_path / "g.npz"))
    assert back.entities == g.entities and back.item_links == g.item_links
    assert back.titles == g.titles and np.array_equal(back.triples, g.triples)
    sub = g.restrict(["i1"])  # a and its 1-hop neighbours b, c
    assert set(sub.entities) == {"a", "b", "c"} and len(sub.triples) == 2
    assert sub.item_links == {"i1": (sub.entity_index()["a"],)} and sub.titles == {
        sub.entity_index()["a"]: "A"}
    two = g.restrict(["i1"], hops=2)
    assert set(two.entities) == {"a", "b", "c", "d"}
    merged = g.merge(KnowledgeGraph(("x", "a"), ("r",), np.array([[0, 0, 1]]), {"i1": (0,)}, {}))
    idx = merged.entity_index()
    assert merged.item_links["i1"] == (idx["a"], idx["x"]) and len(merged.triples) == 5
    with pytest.raises(KGError):
        KnowledgeGraph(("a",), ("r",), np.array([[0, 0, 1]]), {}, {})
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(KGError):
        KnowledgeGraph.load(tmp_path / "bad.npz")


def test_dataset_live_graph() -> None:
    from trainer.data.synthetic import WorldConfig, generate_world

    world = generate_world(WorldConfig(users=20, items_per_domain=12))
    graph, report = dataset_live_kg(world)
    assert report.skipped_total == 0 and len(graph.item_links) == 24
    assert set(graph.relations) == {"kb", "domain"}


def test_cli_builds_and_reads_a_graph_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    records = tmp_path / "item-entities.jsonl"
    records.write_bytes(
        LinkedItem("a", "books", (("kb:Dune", "Dune", 1.0),), "d").encode() + b"\n{broken\n")
    out = tmp_path / "live.npz"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mekb.cli.main", "kg", *args],
                              capture_output=True, text=True, timeout=60)

    built = cli("build", f"items:{records}", "--out", str(out))
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["triples"] == 2 and summary["report"]["skipped"] == {
        "undecodable record (JSONDecodeError)": 1}
    shown = json.loads(cli("info", str(out)).stdout)
    assert ["product:a", "kb", "Dune"] in shown["sample"]
    bad = cli("info", str(records))
    assert bad.returncode == 1 and bad.stderr.startswith("mekb: error:")
    assert "Traceback" not in bad.stderr
