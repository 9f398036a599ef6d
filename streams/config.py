"""The stream worker's processing rules, taken from Settings once."""

from __future__ import annotations

from dataclasses import dataclass

from mekb.settings import Settings


def _csv(value: str) -> frozenset[str]:
    return frozenset(x.strip() for x in value.split(",") if x.strip())


@dataclass(frozen=True)
class StreamConfig:
    """Rules of the MeKB agent.

    Positive interaction: `action` is in `positive_actions` (empty = any action) and
    `rating` is absent or >= `min_rating` (the paper's protocol: rating >= 4).
    """

    target_domains: frozenset[str] = frozenset({"action"})
    min_rating: float = 4.0
    positive_actions: frozenset[str] = frozenset()
    k_star: float = 5.0
    max_entities: int = 128
    example_entities: int = 0  # 0: the whole MeKB
    seen_items: int = 50
    dedupe_window: int = 128
    park_max: int = 100_000
    park_ttl_s: float = 3600.0
    cache_users: int = 200_000
    decay_half_life_s: float = 0.0  # 0: no decay
    decay_min_k: float = 0.01
    user_ttl_s: float = 0.0  # 0: no TTL

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamConfig:
        return cls(
            target_domains=_csv(settings.target_domains),
            min_rating=settings.positive_min_rating,
            positive_actions=_csv(settings.positive_actions),
            k_star=settings.k_star,
            max_entities=settings.mekb_max_entities,
            example_entities=(settings.trainer_max_tokens // 2
                              if settings.example_entities is None
                              else settings.example_entities),
            seen_items=settings.mekb_seen_items,
            dedupe_window=settings.dedupe_window,
            park_max=settings.park_max,
            park_ttl_s=settings.park_ttl_s,
            cache_users=settings.worker_cache_users,
            decay_half_life_s=settings.decay_half_life_s,
            decay_min_k=settings.decay_min_k,
            user_ttl_s=settings.user_ttl_s,
        )

    def is_positive(self, action: str, rating: float | None) -> bool:
        if self.positive_actions and action not in self.positive_actions:
            return False
        return rating is None or rating >= self.min_rating
