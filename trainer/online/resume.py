"""Where a trainer starts from, in order:

1. its latest checkpoint (`<state>/checkpoints/LATEST`): weights, optimiser, offsets,
   recent windows, a publication in flight;
2. else the registry's active version (its `embedme/` weights, or its lineage's,
   trainer/online/publishing.py), resuming the stream at the offsets recorded in that
   version's manifest (`training_offsets`);
3. else the pretrained encoder with an empty item table, from the consumer group's
   committed offsets, else the beginning of the topic.

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
from trainer.online.publishing import load_version

logger = logging.getLogger(__name__)


@dataclass
class Start:
    model: EmbedMe
    state: TrainerState
    optimizer_state: dict[str, Any] | None
    source: str  # checkpoint | registry | pretrained


def from_checkpoint(store: CheckpointStore) -> Start | None:
    ckpt = store.latest()
    if ckpt is None:
        return None
    config = EmbedMeConfig.from_json(ckpt.state.extra["config"])
    model = EmbedMe(config, ckpt.state.item_ids, ckpt.state.item_domains)
    weights = load_file(str(ckpt.model_file))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if not k.endswith("position_ids")]
    if bad or unexpected:
        raise RuntimeError(f"checkpoint {ckpt.path} does not fit the model: missing {bad[:5]}, "
                           f"unexpected {unexpected[:5]}")
    logger.info("resuming from checkpoint %s (step %d, %d items)", ckpt.path.name,
                ckpt.state.step, model.n_items)
    return Start(model, ckpt.state, store.load_optimizer(ckpt), "checkpoint")


def from_registry(registry: Registry) -> Start | None:
    active = registry.active()
    if active is None:
        return None
    model = load_version(registry, active)
    if model is None:
        logger.warning("active version %s carries no trainer weights (embedme/) in its "
                       "lineage: starting from the pretrained encoder", active.version)
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


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def load_start(settings: Settings, store: CheckpointStore, registry: Registry,
               config: EmbedMeConfig) -> Start:
    start = from_checkpoint(store) or from_registry(registry) or pretrained(config)
    device = resolve_device(settings.trainer_device)
    if device != "cpu":
        start.model.to(device)
        logger.info("fine-tuning on %s", device)
    if start.model.config != config and start.source != "pretrained":
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
