"""Where a trainer starts from, in order:

1. its latest checkpoint (`<state>/checkpoints/LATEST`): weights, optimiser, offsets,
   recent windows, a publication in flight;
2. else the registry's active version if it is of the trainer's model kind (its
   `embedme/` or `entitygraph/` weights, or its lineage's, trainer/online/kinds.py),
   resuming the stream at the offsets recorded in that version's manifest
   (`training_offsets`);
3. else a fresh model of the kind (the pretrained encoder; EntityGraph: no entity
   rows yet) with an empty item table, from the consumer group's committed offsets,
   else the beginning of the topic.

Checkpoints are per kind (`checkpoint_dir`): a trainer restarted with another kind
does not read the other kind's weights.

Offsets from 1 or 2 recorded under another id of training-examples than the topic's
now (it was re-created, or the embedded broker restarted: mekb/topics.py) are void:
the trainer keeps its weights and reads the new topic from its beginning
(`rebase_offsets`, called by trainer/online/service.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from safetensors.torch import load_file

from mekb.registry import Registry
from mekb.settings import Settings
from mekb.topics import rebase_needed
from trainer.model import EmbedMe, EmbedMeConfig
from trainer.online.checkpoint import CheckpointStore, TrainerState
from trainer.online.kinds import OnlineKind, load_version, online_kind

logger = logging.getLogger(__name__)


@dataclass
class Start:
    model: Any  # EmbedMe | EntityGraph
    state: TrainerState
    optimizer_state: dict[str, Any] | None
    source: str  # checkpoint | registry | pretrained


def from_checkpoint(store: CheckpointStore, kind: OnlineKind) -> Start | None:
    ckpt = store.latest()
    if ckpt is None:
        return None
    saved_kind = ckpt.state.extra.get("model_kind", "embedme")
    if saved_kind != kind.name:
        raise RuntimeError(f"checkpoint {ckpt.path} holds a {saved_kind} model, not "
                           f"{kind.name}")
    try:
        model = kind.restore(ckpt.state, load_file(str(ckpt.model_file)))
    except RuntimeError as exc:
        raise RuntimeError(f"checkpoint {ckpt.path}: {exc}") from None
    logger.info("resuming from checkpoint %s (step %d, %d items)", ckpt.path.name,
                ckpt.state.step, model.n_items)
    return Start(model, ckpt.state, store.load_optimizer(ckpt), "checkpoint")


def from_registry(registry: Registry, kind: OnlineKind) -> Start | None:
    active = registry.active()
    if active is None:
        return None
    if active.model_kind != kind.name:
        logger.info("active version %s is %s: a fresh %s model starts (its candidates "
                    "are gated against it)", active.version, active.model_kind, kind.name)
        return None
    model = load_version(registry, active, kind)
    if model is None:
        logger.warning("active version %s carries no trainer weights (%s/) in its "
                       "lineage: starting from the pretrained encoder", active.version,
                       kind.weights_dir)
        return None
    offsets = {str(k): int(v) for k, v in (active.manifest.get("training_offsets") or {}).items()}
    ids = {str(k): str(v) for k, v in (active.manifest.get("training_topic_ids") or {}).items()}
    state = TrainerState(offsets=offsets, topic_ids=ids, item_ids=list(model.item_ids),
                         item_domains=list(model.item_domains),
                         parent_version=active.version, last_publish_at=active.created_at)
    logger.info("resuming from registry version %s (%d items, offsets %s)", active.version,
                model.n_items, offsets)
    return Start(model, state, None, "registry")


def pretrained(config: EmbedMeConfig) -> Start:
    logger.info("starting from the pretrained encoder %s", config.encoder or "(default)")
    return Start(EmbedMe(config), TrainerState(), None, "pretrained")


def fresh(kind: OnlineKind) -> Start:
    logger.info("starting a fresh %s model", kind.name)
    return Start(kind.pretrained(), TrainerState(), None, "pretrained")


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def load_start(settings: Settings, store: CheckpointStore, registry: Registry,
               config: EmbedMeConfig, kind: OnlineKind | None = None) -> Start:
    """`config`: a fresh EmbedMe's; `kind`: the model kind (default: EmbedMe)."""
    kind = kind or online_kind("embedme", settings)
    start = from_checkpoint(store, kind) or from_registry(registry, kind) or (
        pretrained(config) if kind.name == "embedme" else fresh(kind))
    device = resolve_device(settings.trainer_device)
    if device != "cpu":
        start.model.to(device)
        logger.info("fine-tuning on %s", device)
    # (`config` is an EmbedMe config: another kind's model has its own, never equal)
    if type(start.model.config) is type(config) and start.model.config != config \
            and start.source != "pretrained":
        logger.info("model config %s kept from the %s (settings ask %s)",
                    start.model.config, start.source, config)
    return start


def rebase_offsets(state: TrainerState, offsets: dict[str, int], topic: str,
                   current_id: str | None) -> bool:
    """Drop the offsets of `topic` in `offsets` (the trainer's live ones) when they were
    read from another topic than the one with `current_id`; record `current_id` in
    `state` (saved with the next checkpoint, together with the offsets). Returns
    whether they were dropped."""
    recorded = state.topic_ids.get(topic)
    void = rebase_needed(recorded, current_id)
    if void:
        mine = {k: v for k, v in offsets.items() if k.rsplit(":", 1)[0] == topic}
        for key in mine:
            del offsets[key]
        logger.warning("%s is a new topic (id %s, was %s): offsets %s dropped, reading it "
                       "from the beginning with the weights kept", topic, current_id,
                       recorded, mine)
    if current_id is not None:
        state.topic_ids[topic] = current_id
    return void
