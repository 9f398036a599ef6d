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
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from linker.base import KB, LinkedEntity
from trainer.data.base import Dataset, Interaction, Item

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
    return Dataset(f"synthetic-{cfg.seed}", items, interactions, entities)
