"""Dataset loaders (Amazon 2014/2018, RecBole atomic, generic), the CDR scenario
builder, MeKB text and the synthetic world."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from mekb.scoring import mekb_scores, sequence_text
from trainer.data.amazon import load_amazon
from trainer.data.atomic import load_atomic
from trainer.data.base import Dataset, DatasetError, Interaction, Item, link_items
from trainer.data.generic import load_generic
from trainer.data.mekb import MeKBBuilder
from trainer.data.scenario import ScenarioConfig, bucket_of, build_scenario
from trainer.data.synthetic import WorldConfig, generate_world


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_amazon_2014_format(tmp_path: Path) -> None:
    # reviews_Books_5.json / meta_Books.json of the 2014 release (meta = Python dict literals)
    reviews = _write(tmp_path / "reviews_Books.json", [
        json.dumps({"reviewerID": "A1", "asin": "0001", "reviewerName": "x", "helpful": [0, 0],
                    "reviewText": "great", "overall": 5.0, "summary": "s",
                    "unixReviewTime": 1400000000, "reviewTime": "05 13, 2014"}),
        json.dumps({"reviewerID": "A2", "asin": "0002", "overall": 2.0,
                    "unixReviewTime": 1400000100}),
    ])
    meta = _write(tmp_path / "meta_Books.json", [
        "{'asin': '0001', 'title': 'Dune', 'price': 7.99, 'brand': 'Ace', "
        "'categories': [['Books', 'Science Fiction & Fantasy', 'Science Fiction']], "
        "'description': 'Desert planet &amp; spice.'}",
        "{'asin': '0002', 'categories': [['Books']]}",
    ], gz=True)
    meta = meta.rename(tmp_path / "meta_Books.json.gz")
    data = load_amazon([("books", reviews, meta)])
    assert data.items["0001"] == Item(
        "0001", "books", "Dune", "Desert planet & spice.", "Ace",
        ("Books", "Science Fiction & Fantasy", "Science Fiction"),
    )
    assert data.items["0002"].title == "0002"  # no title: the asin
    assert [(i.user_id, i.item_id, i.rating, i.ts) for i in data.interactions] == [
        ("A1", "0001", 5.0, 1400000000.0), ("A2", "0002", 2.0, 1400000100.0)]


def test_amazon_2018_format_and_errors(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "Movies_and_TV.json", [
        json.dumps({"overall": 4.0, "verified": True, "reviewTime": "01 1, 2018",
                    "reviewerID": "A1", "asin": "B01", "style": {"Format:": " DVD"},
                    "reviewerName": "n", "reviewText": "t", "summary": "s",
                    "unixReviewTime": 1514764800}),
    ])
    meta = _write(tmp_path / "meta_Movies_and_TV.json", [
        json.dumps({"asin": "B01", "title": "Alien", "category": ["Movies & TV", "Horror"],
                    "brand": "Ridley Scott", "description": ["In space", "no one hears."],
                    "main_cat": "Movies & TV"}),
    ])
    data = load_amazon([("movies", reviews, meta)])
    item = data.items["B01"]
    assert item.categories == ("Movies & TV", "Horror") and item.brand == "Ridley Scott"
    assert item.text == "In space no one hears."
    link_items(data)
    ids = {e.entity_id: e.weight for e in data.entities["B01"]}
    assert ids["brand:Ridley Scott"] == 0.5 and ids["category:Horror"] == 0.3
    assert ids["product:B01"] == 0.1
    bad = _write(tmp_path / "bad.json", ['{"asin": "B01"}'])
    with pytest.raises(DatasetError, match="bad.json:1"):
        load_amazon([("movies", bad, None)])


def test_recbole_atomic_files(tmp_path: Path) -> None:
    (tmp_path / "tiny.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t5\t100\n2\t11\t3\t101\n")
    (tmp_path / "tiny.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tHeat\t1995\tAction Crime\n11\tEmma\t1996\tDrama Romance\n")
    data = load_atomic(tmp_path, "tiny", domain_of=lambda r: r["class"].split()[0].lower())
    assert data.items["10"].domain == "action" and data.items["10"].categories == (
        "Action", "Crime")
    assert data.items["11"].title == "Emma" and "1996" in data.items["11"].text
    assert [(i.user_id, i.domain, i.rating) for i in data.interactions] == [
        ("1", "action", 5.0), ("2", "drama", 3.0)]


def test_ml100k_uses_the_sample_split() -> None:
    from mekb.sample import movies
    from trainer.data.atomic import load_ml100k

    data = load_ml100k()
    catalog = movies()
    assert len(data.interactions) == 100_000
    assert all(data.items[i].domain == catalog[i].domain for i in list(catalog)[:200])
    assert set(data.domains()) == {"action", "drama"}


def test_generic_csv_and_jsonl(tmp_path: Path) -> None:
    items = _write(tmp_path / "items.jsonl", [
        json.dumps({"item_id": "a", "domain": "d1", "title": "A", "categories": ["x", "y"]}),
        json.dumps({"item_id": "b", "domain": "d2", "title": "B"}),
    ])
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,rating,ts\nu1,a,5,1\nu1,b,,2\n")
    data = load_generic(inter, items)
    assert data.items["a"].categories == ("x", "y")
    assert [(i.domain, i.rating) for i in data.interactions] == [("d1", 5.0), ("d2", None)]
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\nu1,zzz\n")
    with pytest.raises(DatasetError, match="no domain"):
        load_generic(bad)


def _toy(n_users: int = 60) -> Dataset:
    """Every user: 6 source positives, 6 target positives (users < 30) or none, 1 negative."""
    items = {f"s{i}": Item(f"s{i}", "src", f"S{i}") for i in range(8)}
    items |= {f"t{i}": Item(f"t{i}", "tgt", f"T{i}") for i in range(8)}
    inter = []
    for u in range(n_users):
        for i in range(6):
            inter.append(Interaction(f"u{u}", f"s{(u + i) % 8}", "src", 5.0, u * 100 + i))
        if u < 30:
            for i in range(6):
                inter.append(Interaction(f"u{u}", f"t{(u + i) % 8}", "tgt", 4.0, u * 100 + 10 + i))
        inter.append(Interaction(f"u{u}", f"t{(u + 7) % 8}", "tgt", 2.0, u * 100 + 50))
    return link_items(Dataset("toy", items, inter))


def test_scenario_protocol() -> None:
    data = _toy()
    cfg = ScenarioConfig("src", "tgt", min_item_positives=5, seed=3)
    sc = build_scenario(data, cfg)
    # 30 overlapping users, 20 % held out with all their target records in test
    assert len(sc.held_out_users) == 6
    for u in sc.held_out_users:
        assert not any(r.user_id == u and r.domain == "tgt" for r in sc.train + sc.valid)
        assert sum(r.user_id == u for r in sc.test) == 6
        assert sc.buckets[u] == "zero-shot"
    assert all(r.rating is None or r.rating >= 4 for r in sc.train + sc.valid + sc.test)
    assert all(r.domain == "tgt" for r in sc.valid + sc.test)
    # another 10 % of the overlapping users are zero-shot validation users, disjoint
    assert len(sc.valid_held_out_users) == 3
    assert not sc.valid_held_out_users & sc.held_out_users
    for u in sc.valid_held_out_users:
        assert sum(r.user_id == u for r in sc.valid) == 6
        assert not any(r.user_id == u and r.domain == "tgt" for r in sc.train + sc.test)
        assert sc.buckets[u] == "zero-shot"
    # every source record is trained on (held-out users' too); 8:1:1 over the other
    # target records
    assert sum(r.domain == "src" for r in sc.train) == 60 * 6
    rest = 30 * 6 - 9 * 6
    assert abs(sum(r.domain == "tgt" for r in sc.train) - 0.8 * rest) <= 1
    assert abs(len(sc.valid) - 3 * 6 - 0.1 * rest) <= 1
    # buckets count target-domain training records
    tcount = Counter(r.user_id for r in sc.train if r.domain == "tgt")
    for u, b in sc.buckets.items():
        assert b == bucket_of(tcount.get(u, 0))
    # deterministic for a seed, different across seeds
    again = build_scenario(data, cfg)
    assert again.train == sc.train and again.held_out_users == sc.held_out_users
    other = build_scenario(data, ScenarioConfig("src", "tgt", min_item_positives=5, seed=4))
    assert other.held_out_users != sc.held_out_users


def test_scenario_filters() -> None:
    data = _toy()
    sc = build_scenario(data, ScenarioConfig("src", "tgt", min_user_positives=7,
                                             min_item_positives=5))
    users = {r.user_id for r in sc.train + sc.test + sc.valid}
    assert users == {f"u{u}" for u in range(30)}  # source-only users have 6 < 7 positives
    with pytest.raises(DatasetError):
        build_scenario(data, ScenarioConfig("src", "nope"))


def test_mekb_text_from_training_only_and_shared_scoring() -> None:
    data = _toy()
    sc = build_scenario(data, ScenarioConfig("src", "tgt", min_item_positives=5, seed=1))
    builder = MeKBBuilder(sc.entities, sc.train)
    test_items = {(r.user_id, r.item_id) for r in sc.test}
    user = next(iter(sc.held_out_users))
    counts = builder.counts(user)
    # no entity of a held-out user's target (test) items is in their MeKB
    assert not any(e == f"product:{i}" for (u, i) in test_items if u == user for e in counts)
    expected = mekb_scores(counts, builder.df, builder.n_users, builder.k_star)
    titles = [builder.titles[s.entity_id] for s in expected]
    assert builder.text(user, 64) == sequence_text(titles, 64)
    # excluding an item removes its product entity
    some = sc.train_by_user()[user][0]
    assert f"product:{some}" not in builder.counts(user, exclude={some})


def test_synthetic_world_is_deterministic_and_shares_entities() -> None:
    a = generate_world(WorldConfig(users=50, items_per_domain=24, seed=7))
    b = generate_world(WorldConfig(users=50, items_per_domain=24, seed=7))
    assert a.interactions == b.interactions
    ents = {d: {e.entity_id for i, es in a.entities.items() if a.items[i].domain == d
                for e in es} for d in a.domains()}
    assert len(ents["books"] & ents["movies"]) > 20  # entities shared across domains
    for iid, es in a.entities.items():
        assert all(e.title in a.items[iid].text for e in es)  # item text mentions them
    both = {i.user_id for i in a.interactions if i.domain == "books"} & {
        i.user_id for i in a.interactions if i.domain == "movies"}
    assert 0 < len(both) < 50


def test_multi_source_scenario_split_rules() -> None:
    """Three domains: sources a+b, target c. Only target records are predicted; every
    source record is trained on; test and validation zero-shot users are disjoint."""
    items = {f"{d}{i}": Item(f"{d}{i}", d, f"{d}{i}") for d in "abc" for i in range(6)}
    inter = []
    for u in range(40):
        for d in ("a" if u % 2 else "b", "c"):
            if d == "c" and u >= 30:
                continue  # users 30..39: sources only
            inter += [Interaction(f"u{u}", f"{d}{(u + i) % 6}", d, 5.0, u * 100 + i)
                      for i in range(5)]
    data = Dataset("three", items, inter)
    sc = build_scenario(data, ScenarioConfig("a,b", "c", min_item_positives=3, seed=2))
    assert sc.sources == ("a", "b") and sc.source == "a+b"
    assert sc.source_items() == sorted(i for i in items if i[0] in "ab")
    assert sum(r.domain in ("a", "b") for r in sc.train) == 40 * 5
    assert all(r.domain == "c" for r in sc.valid + sc.test)
    # 30 overlapping users: 6 zero-shot test users, 3 zero-shot validation users
    assert len(sc.held_out_users) == 6 and len(sc.valid_held_out_users) == 3
    assert not sc.held_out_users & sc.valid_held_out_users
    assert {r.user_id for r in sc.valid} >= sc.valid_held_out_users
    assert all(sc.buckets[u] == "zero-shot" for u in sc.valid_held_out_users)
    same = build_scenario(data, ScenarioConfig(("a", "b"), "c", min_item_positives=3, seed=2))
    assert same.train == sc.train and same.valid == sc.valid
    with pytest.raises(DatasetError, match="differ"):
        build_scenario(data, ScenarioConfig("a,c", "c"))


def test_ml100k_genre_domains_and_knowledge_graph() -> None:
    from trainer.data.atomic import load_ml100k

    data = load_ml100k(genres=3)
    assert set(data.domains()) == {"action", "comedy", "drama"}
    sizes = Counter(it.domain for it in data.items.values())
    assert min(sizes.values()) > 450  # three domains of comparable size
    assert data.items["1"].domain == "comedy"  # Toy Story: Animation Children's Comedy
    assert data.items["2"].domain == "action"  # GoldenEye
    assert data.kg is not None and len(data.kg.item_links) == 1598
    sc = build_scenario(data, ScenarioConfig("drama,comedy", "action", min_item_positives=10,
                                             kg_hops=1))
    assert sc.kg is not None
    # the scenario's graph: its items' links and every triple touching their entities
    assert set(sc.kg.item_links) <= set(sc.items) and len(sc.kg.item_links) > 0.9 * len(sc.items)
    linked = {e for ents in sc.kg.item_links.values() for e in ents}
    heads, tails = sc.kg.triples[:, 0], sc.kg.triples[:, 2]
    assert all(h in linked or t in linked for h, t in zip(heads, tails, strict=True))
    assert len(sc.kg.triples) < len(data.kg.triples)


def test_synthetic_world_knowledge_graph_modes() -> None:
    plain = generate_world(WorldConfig(users=60, items_per_domain=24, seed=3))
    only = generate_world(WorldConfig(users=60, items_per_domain=24, seed=3, kg="kg-only"))
    shared = generate_world(WorldConfig(users=60, items_per_domain=24, seed=3, kg="kg"))
    assert plain.kg is None and plain.interactions == only.interactions == shared.interactions
    # kg-only: the two domains share no entity and no title word ...
    ents = {d: {e.entity_id for i, es in only.entities.items() if only.items[i].domain == d
                for e in es} for d in ("books", "movies")}
    assert not ents["books"] & ents["movies"]
    titles = {d: {e.title for i, es in only.entities.items() if only.items[i].domain == d
                  for e in es} for d in ("books", "movies")}
    assert not titles["books"] & titles["movies"]
    # ... but the graph relates them: a books item and a movies item reach the same topic
    g = only.kg
    assert g is not None

    def topics(item: str) -> set[str]:
        frontier = set(g.item_links[item])
        for _ in range(3):
            frontier |= {int(t) for e in frontier for _, t in g.neighbours(e)}
        return {g.entities[e] for e in frontier if g.entities[e].startswith("topic:")}

    assert topics("b0") and topics("b0") & topics("m0")  # item n of each domain: topic n % 12
    assert shared.kg is not None and set(shared.kg.relations) == {"mentions", "topic"}
