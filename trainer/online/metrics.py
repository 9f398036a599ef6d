"""Prometheus metrics of `mekb trainer` (names `mekb_trainer_*`, docs/metrics.md)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PUBLISH_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._item_tower_at = 0.0
        self.examples = Counter(
            "mekb_trainer_examples", "Training-examples records consumed, by outcome "
            "(trained, held_out, invalid; skipped: passed over by MEKB_TRAINER_MAX_LAG_RECORDS; "
            "replayed: trained again by MEKB_TRAINER_REPLAY; replay_forgone: replays not taken, "
            "more being owed than the cap; erased: queued examples of a deleted "
            "user dropped).",
            ["outcome"], registry=registry)
        self.examples_cut = Counter(
            "mekb_trainer_examples_cut",
            "Training examples with fewer entities than the model reads (max_tokens // 2 "
            "titles) while the user's MeKB had more: the stream worker's "
            "MEKB_EXAMPLE_ENTITIES is below what the model can use.", registry=registry)
        self.steps = Counter(
            "mekb_trainer_steps", "Fine-tuning steps.", registry=registry)
        self.loss = Gauge(
            "mekb_trainer_loss", "Full-softmax loss of the last fine-tuning step.",
            registry=registry)
        self.kg_loss = Gauge(
            "mekb_trainer_kg_loss", "TransE margin loss of the last step's knowledge-graph "
            "triples (EntityGraph with MEKB_TRAINER_KG_DIM > 0).", registry=registry)
        self.step_seconds = Histogram(
            "mekb_trainer_step_duration_seconds", "Wall time of one fine-tuning step.",
            buckets=STEP_BUCKETS, registry=registry)
        self.lag = Gauge(
            "mekb_trainer_consumer_lag_records",
            "training-examples records not consumed yet (sum over partitions).",
            registry=registry)
        self.items = Gauge(
            "mekb_trainer_items", "Rows of the live model's item table.", registry=registry)
        self.last_publish = Gauge(
            "mekb_trainer_last_publish_timestamp_seconds",
            "Unix time of the last version published (any kind).", registry=registry)
        self.item_tower_published = Gauge(
            "mekb_trainer_item_tower_published_timestamp_seconds",
            "Unix time the item table served now was fitted and published (full or items "
            "version).", registry=registry)
        self.item_tower_age = Gauge(
            "mekb_trainer_item_tower_age_seconds",
            "Seconds since the last item-table publication (full or items version).",
            registry=registry)
        self.item_tower_age.set_function(self._item_tower_age)
        self.publish_seconds = Histogram(
            "mekb_trainer_publish_duration_seconds",
            "Wall time of gate + export + publish of one candidate.", ["kind"],
            buckets=PUBLISH_BUCKETS, registry=registry)
        self.refit_seconds = Histogram(
            "mekb_trainer_refit_duration_seconds", "Wall time of one item-tower refit.",
            buckets=PUBLISH_BUCKETS, registry=registry)
        self.gate = Counter(
            "mekb_trainer_gate_decisions", "Quality-gate decisions (published, rejected, "
            "skipped, initial), by version kind.", ["decision", "kind"], registry=registry)
        self.gate_score = Gauge(
            "mekb_trainer_gate_score", "Scores of the last gate run on the held-out slice.",
            ["model", "metric"], registry=registry)
        self.gate_slice = Gauge(
            "mekb_trainer_gate_slice_examples", "Held-out examples both models were scored "
            "on in the last gate run (0: skipped or initial).", registry=registry)
        self.gate_kinds = Info(
            "mekb_trainer_gate_model_kinds", "Model kinds of the candidate and the active "
            "version in the last gate run.", registry=registry)
        self.entities = Gauge(
            "mekb_trainer_entities", "Rows of the live EntityGraph model's entity table.",
            registry=registry)
        self.entities_added = Counter(
            "mekb_trainer_entities_added", "Entities given a row (title encoded once) as "
            "they first appeared in training examples.", registry=registry)
        self.replay_owed = Gauge(
            "mekb_trainer_replay_owed_steps", "Replay steps deferred while the trainer was "
            "behind the stream (MEKB_TRAINER_REPLAY_DEFER_LAG), taken when it catches up.",
            registry=registry)
        self.holdout = Gauge(
            "mekb_trainer_holdout_examples", "Held-out examples kept for the gate.",
            registry=registry)
        self.active = Info(
            "mekb_trainer_active_version", "The registry's active version as last set or "
            "seen by the trainer (labels version, kind, model_kind).", registry=registry)

    def mark_item_tower(self, published_at: float) -> None:
        self._item_tower_at = published_at
        self.item_tower_published.set(published_at)

    def _item_tower_age(self) -> float:
        at = self._item_tower_at
        return time.time() - at if at > 0 else 0.0
