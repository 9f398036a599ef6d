"""Per-user MeKB text from training interactions (MeKB-Rec §3.1), via `mekb.scoring`.

k(u, e) = sum of the entity weights over u's positive training interactions (all
domains, equal weight); df(e) = number of users whose MeKB holds e; N = number of
users with training interactions. Scores and text come from `mekb.scoring` (the one
implementation shared with streams/ and serving/).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

from linker.base import LinkedEntity
from mekb.scoring import DEFAULT_K_STAR, mekb_scores, sequence_text
from trainer.data.base import Interaction


class MeKBBuilder:
    def __init__(
        self,
        entities: Mapping[str, list[LinkedEntity]],
        train: Iterable[Interaction],
        *,
        k_star: float = DEFAULT_K_STAR,
    ) -> None:
        self.entities = entities
        self.k_star = k_star
        self.items_of: dict[str, list[str]] = defaultdict(list)
        for it in train:
            self.items_of[it.user_id].append(it.item_id)
        self.titles: dict[str, str] = {}
        df: dict[str, int] = defaultdict(int)
        for items in self.items_of.values():
            held = set()
            for iid in items:
                for ent in entities.get(iid, ()):
                    held.add(ent.entity_id)
                    self.titles.setdefault(ent.entity_id, ent.title)
            for e in held:
                df[e] += 1
        self.df = dict(df)
        self.n_users = len(self.items_of)

    def counts(self, user: str, exclude: Collection[str] = ()) -> dict[str, float]:
        k: dict[str, float] = defaultdict(float)
        for iid in self.items_of.get(user, ()):
            if iid in exclude:
                continue
            for ent in self.entities.get(iid, ()):
                k[ent.entity_id] += ent.weight
        return dict(k)

    def titles_by_score(self, user: str, exclude: Collection[str] = ()) -> list[str]:
        scored = mekb_scores(self.counts(user, exclude), self.df, self.n_users, self.k_star)
        return [self.titles[s.entity_id] for s in scored]

    def text(self, user: str, max_tokens: int, exclude: Collection[str] = ()) -> str:
        return sequence_text(self.titles_by_score(user, exclude), max_tokens)
