"""A synthetic cross-domain world with known entities, for fast tests and a second
results table.

- Topics, each with a handful of real English words as entities ("rocket", "galaxy",
  ...), shared by every domain: a pretrained encoder knows which words belong together,
  a randomly initialised one must learn it from co-occurrence (the w/o-PLM ablation).
- Items of every domain belong to one topic and mention two of its entities plus one
  random entity (noise); item popularity is Zipf-skewed within a topic.
- Users have latent topic interests (sparse Dirichlet); each interaction picks a topic
  by interest, then an item of that topic in the domain; a fraction of interactions are
  noise (random item, random rating). Some users are active in one domain only.

Deterministic for a seed. Entities are known, so no linker is needed.

Knowledge graph (`kg`, off by default so the default world and its results stay as
they were): every item is the entity `item:<id>` with a `mentions` edge to each of its
entities.
- "kg": entities as above (shared words), each with a `topic` edge to `topic:<name>`;
- "kg-only": each domain has its own opaque entities (`kb:<domain>/<word>`, titled
  like "b17": neither a shared entity nor a pretrained encoder relates the domains),
  items have opaque titles, and only the graph does: every domain's entity has a
  `same_as` edge to one shared concept, each concept a `topic` edge. Target items
  are then related to source items through knowledge-graph relations alone — the
  world on which a KG-enhanced model must beat its twin (the second paper's claim).
`kg_noise`: that fraction of extra `mentions` edges to random entities.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kg.builder import GraphBuilder
from kg.graph import KnowledgeGraph
from linker.base import KB, LinkedEntity
from trainer.data.base import Dataset, Interaction, Item

KG_MODES = ("none", "kg", "kg-only")

TOPICS: dict[str, tuple[str, ...]] = {
    "space": ("rocket", "galaxy", "astronaut", "planet", "telescope", "orbit", "nasa", "moon"),
    "cooking": ("recipe", "chef", "kitchen", "pasta", "baking", "spices", "oven", "dessert"),
    "football": ("goalkeeper", "stadium", "referee", "striker", "world cup", "penalty",
                 "league", "coach"),
    "music": ("guitar", "piano", "orchestra", "jazz", "concert", "singer", "violin", "album"),
    "war": ("soldier", "battle", "army", "tank", "general", "invasion", "trench", "navy"),
    "romance": ("wedding", "love letter", "bride", "kiss", "honeymoon", "valentine",
                "romance", "heartbreak"),
    "crime": ("detective", "murder", "police", "mafia", "heist", "prison", "gangster", "clue"),
    "ocean": ("shark", "submarine", "coral reef", "whale", "sailor", "island", "pirate",
              "lighthouse"),
    "medicine": ("surgeon", "hospital", "nurse", "vaccine", "virus", "doctor", "diagnosis",
                 "pharmacy"),
    "computers": ("programmer", "software", "robot", "algorithm", "hacker", "internet",
                  "computer", "database"),
    "horses": ("horse", "cowboy", "ranch", "saddle", "rodeo", "stable", "pony", "jockey"),
    "gardening": ("garden", "tulip", "roses", "greenhouse", "compost", "seeds", "orchid",
                  "vegetables"),
}
DOMAIN_NOUNS = {"books": "Book", "movies": "Film", "music": "Album", "games": "Game"}


@dataclass(frozen=True)
class WorldConfig:
    domains: tuple[str, str] = ("books", "movies")
    items_per_domain: int = 120
    users: int = 400
    overlap: float = 0.6  # fraction of users active in both domains
    mean_actions: float = 12.0  # per user and active domain
    interest_alpha: float = 0.25  # Dirichlet concentration: small = few topics per user
    noise: float = 0.15  # fraction of random interactions
    zipf: float = 0.8
    topics: int = 12
    seed: int = 0
    kg: str = "none"  # none | kg | kg-only (module docstring)
    kg_noise: float = 0.0


def generate_world(config: WorldConfig | None = None) -> Dataset:
    cfg = config or WorldConfig()
    rng = random.Random(cfg.seed)
    topic_names = list(TOPICS)[: cfg.topics]
    all_entities = [(t, w) for t in topic_names for w in TOPICS[t]]
    items: dict[str, Item] = {}
    entities: dict[str, list[LinkedEntity]] = {}
    by_topic: dict[tuple[str, str], list[str]] = {}
    for domain in cfg.domains:
        noun = DOMAIN_NOUNS.get(domain, domain.title())
        for n in range(cfg.items_per_domain):
            topic = topic_names[n % len(topic_names)]
            a, b = rng.sample(TOPICS[topic], 2)
            _, c = rng.choice(all_entities)
            iid = f"{domain[0]}{n}"
            if cfg.kg == "kg-only":
                items[iid] = Item(iid, domain, f"{noun} {n}", "")
                entities[iid] = [
                    LinkedEntity(f"{KB}:{domain}/{w}", _opaque(domain, w, all_entities), 1.0)
                    for w in dict.fromkeys((a, b, c))
                ]
            else:
                title = f"{noun} {n}: {a} and {b}"
                items[iid] = Item(iid, domain, title, f"A {noun.lower()} about {a}, {b} and {c}.")
                entities[iid] = [
                    LinkedEntity(f"{KB}:{w}", w, 1.0) for w in dict.fromkeys((a, b, c))
                ]
            by_topic.setdefault((domain, topic), []).append(iid)
    weights = {
        key: [1.0 / (rank + 1) ** cfg.zipf for rank in range(len(ids))]
        for key, ids in by_topic.items()
    }
    domain_items = {d: [i for i in items if items[i].domain == d] for d in cfg.domains}
    interactions: list[Interaction] = []
    ts = 1_600_000_000.0
    for u in range(cfg.users):
        raw = [rng.gammavariate(cfg.interest_alpha, 1.0) for _ in topic_names]
        total = sum(raw) or 1.0
        interest = [r / total for r in raw]
        active = list(cfg.domains) if rng.random() < cfg.overlap else [rng.choice(cfg.domains)]
        uid = f"u{u}"
        for domain in active:
            n_actions = 3 + int(rng.expovariate(1.0 / max(cfg.mean_actions - 3, 1.0)))
            seen: set[str] = set()
            for _ in range(n_actions):
                if rng.random() < cfg.noise:
                    iid = rng.choice(domain_items[domain])
                    rating = float(rng.randint(1, 5))
                else:
                    topic = rng.choices(topic_names, weights=interest)[0]
                    pool = by_topic[(domain, topic)]
                    iid = rng.choices(pool, weights=weights[(domain, topic)])[0]
                    rating = float(rng.choice((4, 5, 5)))
                if iid in seen:
                    continue
                seen.add(iid)
                ts += 1.0
                interactions.append(Interaction(uid, iid, domain, rating, ts))
    name = f"synthetic-{cfg.seed}" + ("" if cfg.kg == "none" else f"-{cfg.kg}")
    kg = None if cfg.kg == "none" else _graph(cfg, items, entities, all_entities)
    return Dataset(name, items, interactions, entities, kg=kg)


def _opaque(domain: str, word: str, all_entities: list[tuple[str, str]]) -> str:
    """A title that says nothing: domain letter + the word's position in a shuffle of
    the domain's own (the same word gets unrelated numbers in two domains)."""
    order = list(range(len(all_entities)))
    random.Random(f"opaque-{domain}").shuffle(order)
    return f"{domain[0]}{order[[w for _, w in all_entities].index(word)]}"


def _graph(cfg: WorldConfig, items: dict[str, Item], entities: dict[str, list[LinkedEntity]],
           all_entities: list[tuple[str, str]]) -> KnowledgeGraph:
    if cfg.kg not in KG_MODES:
        raise ValueError(f"kg must be one of {KG_MODES}, not {cfg.kg!r}")
    rng = random.Random(f"{cfg.seed}-kg")  # its own stream: the world itself is unchanged
    topic_of = {w: t for t, w in all_entities}
    position = {w: n for n, (_, w) in enumerate(all_entities)}
    g = GraphBuilder(f"synthetic-{cfg.seed}-{cfg.kg}")
    ents = sorted({e.entity_id: e.title for ents in entities.values() for e in ents}.items())
    for entity_id, title in ents:
        word = entity_id.split(":", 1)[1].split("/", 1)[-1]
        topic = f"topic:{topic_of[word]}"
        if cfg.kg == "kg-only":
            concept = f"concept:{position[word]}"
            g.entity(concept, f"c{position[word]}")
            g.entity(topic, f"t{list(TOPICS).index(topic_of[word])}")
            g.add_triple(entity_id, "same_as", concept)
            g.add_triple(concept, "topic", topic)
        else:
            g.entity(topic, topic_of[word])
            g.add_triple(entity_id, "topic", topic)
        g.entity(entity_id, title)
    for iid, item in items.items():
        node = f"item:{iid}"
        g.add_link(iid, node, item.title)
        for e in entities[iid]:
            g.add_triple(node, "mentions", e.entity_id)
        if rng.random() < cfg.kg_noise:
            g.add_triple(node, "mentions", rng.choice(ents)[0])
    return g.finish()
