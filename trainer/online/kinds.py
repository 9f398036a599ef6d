"""Model kinds in the continuous trainer: what differs between EmbedMe and EntityGraph.

`OnlineTrainer` (loop.py) is written once against `OnlineKind`; the kind supplies a
fresh model, its loss on a micro-batch of examples, its user embeddings for the gate,
its checkpoint payload and its `full` bundle. Looked up by name (`online_kind`), the
names of mekb/registry.py MODEL_KINDS. One trainer process trains ONE kind
(MEKB_MODEL_KIND / `mekb trainer --kind`): it is the registry's only writer, and two
kinds in one process would split its CPU between models of which only one can be
active; the gate compares its candidates with the active version whatever that
version's kind (trainer/online/gate.py), so another kind is introduced by running
its trainer, and `mekb models activate` switches back and forth.

Bundles (docs/contracts.md): every kind ships `user_tower.onnx`, `items.npy`,
`items.json` and its trainer weights in a directory named after it (`embedme/`,
`entitygraph/`); EmbedMe adds `tokenizer/`, EntityGraph `entities.npy` +
`entities.json`. An `items` refit copies the parent's tower files whatever the kind
(`build_items_bundle`).

EntityGraph's entity vectors: an example naming an entity the model has no row for
gets one before the step that trains on it (`prepare`, once per poll, batched): the
title encoder (MEKB_TRAINER_ENCODER, frozen) runs once per entity, for all of a poll's
new entities in one batched run, never inside a step; the row then lives in the model
(fine-tuned, checkpointed, exported), so neither a restart nor serving runs the encoder
for it again. The rows are keyed by the encoder's identity (a digest of its config and
weights, `encoder_fingerprint`): a trainer started with another or a fine-tuned encoder
re-encodes every row from its title (titles are checkpointed) before training on.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mekb.registry import (
    MANIFEST,
    ModelVersion,
    Registry,
    VersionNotFound,
    bundle_files,
    sha256_file,
)
from mekb.settings import Settings
from trainer.model import replace_param_in_optimizer
from trainer.online.checkpoint import TrainerState
from trainer.online.examples import Example
from trainer.online.row_adam import adam_rows

logger = logging.getLogger(__name__)

DEFAULT_TRAINER_KIND = "embedme"  # a bare `mekb trainer` trains what it trained before kinds
ITEM_FILES = ("items.npy", "items.json")
# manifest fields of a version itself (not of its user tower): an items version does
# not inherit them from its parent
OWN_FIELDS = ("version", "parent", "kind", "created_at", "files", "metrics", "gate",
              "training_offsets", "trainer", "training_topic_ids", "held", "n_items")
EMBED_CHUNK = 1024
GRAD_CLIP = 1.0  # max gradient norm of a step (every kind)
LIVE_ENTITY_DROPOUT = 0.1  # a new live EntityGraph's entity dropout (pretrained())
# EntityGraph's item table in the stream: a fresh row has a handful of steps to catch up
# (offline training's 3e-3 left the default synthetic world at popularity's HR@10)
ITEM_LR = 2e-2


class OnlineKind(Protocol):
    name: str
    weights_dir: str  # directory of a full bundle holding the trainer's weights
    default_batch: int  # examples per step unless MEKB_TRAINER_BATCH_SIZE says otherwise
    catchup_factor: int  # x the batch while behind, unless MEKB_TRAINER_CATCHUP_BATCH says
    default_replay: int  # replay steps per step unless MEKB_TRAINER_REPLAY says otherwise
    default_publish_every: int  # unless MEKB_TRAINER_PUBLISH_EVERY says otherwise
    torch_threads: int  # intra-op threads of the trainer process (0: torch's default)

    def pretrained(self) -> Any: ...

    def can_serve(self, model: Any) -> bool:
        """Whether a version of `model` gives users meaningful embeddings yet (the
        initial publication into an empty registry waits for it)."""
        ...

    def checkpoint_extra(self, model: Any) -> dict[str, Any]:
        """What a checkpoint's state.extra needs to rebuild the model (with its tensors)."""
        ...

    def restore(self, state: TrainerState, weights: dict[str, Tensor]) -> Any: ...

    def load_dir(self, path: Path) -> Any: ...

    def optimizer(self, model: Any) -> torch.optim.Optimizer: ...

    def prepare(self, model: Any, examples: Sequence[Example],
                optimizer: torch.optim.Optimizer) -> int:
        """Everything the model needs before training on / scoring `examples`;
        returns how many entities were added."""
        ...

    def loss(self, model: Any, batch: Sequence[Example], generator: torch.Generator) -> Tensor: ...

    def step(self, model: Any, batch: Sequence[Example], optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> float:
        """One optimiser step on `batch`; returns its loss."""
        ...

    def user_embeddings(self, model: Any, examples: Sequence[Example]) -> np.ndarray: ...

    def write_full_bundle(self, model: Any, out_dir: Path, *, version: str,
                          parent: str | None, gate: dict[str, Any], metrics: dict[str, Any],
                          offsets: dict[str, int]) -> Path: ...


def trainer_kind(settings: Settings) -> str:
    return settings.model_kind or DEFAULT_TRAINER_KIND


def online_kind(name: str, settings: Settings) -> OnlineKind:
    factory = _KINDS.get(name)
    if factory is None:
        raise ValueError(f"unknown model kind {name!r} (known: {', '.join(sorted(_KINDS))})")
    return factory(settings)


def checkpoint_dir(state_root: Path, kind: str) -> Path:
    """`checkpoints/` for EmbedMe (as before kinds), `checkpoints-<kind>/` otherwise: a
    trainer restarted with another kind starts that kind's own lineage of checkpoints."""
    return state_root / ("checkpoints" if kind == DEFAULT_TRAINER_KIND else f"checkpoints-{kind}")


def dense_step(model: nn.Module, loss: Tensor, optimizer: torch.optim.Optimizer) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return float(loss.detach())


def _grow_in_optimizer(optimizer: torch.optim.Optimizer, old: Tensor, new: nn.Parameter,
                       at: int) -> None:
    """Point the optimiser at `new`, `old` with rows inserted at `at`: its per-row state
    gets zero rows there (new rows start with fresh moments, trained ones keep theirs)."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    extra = new.shape[0] - old.shape[0]
    optimizer.state[new] = {
        k: torch.cat([v[:at], v.new_zeros((extra, *v.shape[1:])), v[at:]])
        if isinstance(v, Tensor) and v.dim() >= 1 and v.shape == old.shape else v
        for k, v in state.items()}


def domain_logits(users: Tensor, table: Tensor, domains: Sequence[str],
                  item_domains: Sequence[str]) -> Tensor:
    """users @ items, -inf outside each example's domain (full softmax per domain)."""
    index: dict[str, int] = {}
    row_dom = torch.tensor([index.setdefault(d, len(index)) for d in item_domains],
                           dtype=torch.long, device=table.device)
    ex_dom = torch.tensor([index.get(d, -1) for d in domains], dtype=torch.long,
                          device=table.device)
    mask = ex_dom.unsqueeze(1) == row_dom.unsqueeze(0)
    return (users @ table.t()).masked_fill(~mask, float("-inf"))


# --- EmbedMe -------------------------------------------------------------------------


class EmbedMeOnline:
    name = "embedme"
    weights_dir = "embedme"
    default_batch = 16
    catchup_factor = 1  # a transformer step's cost grows with its batch: nothing to gain
    default_replay = 0  # a transformer step is too dear to repeat
    default_publish_every = 5000  # at a CPU's 1-5 examples/s the interval comes first
    torch_threads = 0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def pretrained(self) -> Any:
        from trainer.model import EmbedMe
        from trainer.online.loop import model_config

        return EmbedMe(model_config(self.settings))

    def can_serve(self, model: Any) -> bool:
        return True  # the pretrained encoder reads any title

    def checkpoint_extra(self, model: Any) -> dict[str, Any]:
        return {"config": model.config.to_json()}

    def restore(self, state: TrainerState, weights: dict[str, Tensor]) -> Any:
        from trainer.model import EmbedMe, EmbedMeConfig

        model = EmbedMe(EmbedMeConfig.from_json(state.extra["config"]), state.item_ids,
                        state.item_domains)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        bad = [k for k in missing if not k.endswith("position_ids")]
        if bad or unexpected:
            raise RuntimeError(f"checkpoint does not fit the model: missing {bad[:5]}, "
                               f"unexpected {unexpected[:5]}")
        return model

    def load_dir(self, path: Path) -> Any:
        from trainer.model import EmbedMe

        return EmbedMe.load(path)

    def optimizer(self, model: Any) -> torch.optim.Optimizer:
        from trainer.online.loop import build_optimizer

        if self.settings.trainer_freeze_layers:
            model.freeze_lower_layers(self.settings.trainer_freeze_layers)
        return build_optimizer(model, self.settings)

    def prepare(self, model: Any, examples: Sequence[Example],
                optimizer: torch.optim.Optimizer) -> int:
        return 0

    def loss(self, model: Any, batch: Sequence[Example], generator: torch.Generator) -> Tensor:
        tokens = model.tokenize([e.text(model.config.max_tokens) for e in batch])
        device = model.item_table.device
        users = model.encode_users(tokens["input_ids"].to(device),
                                   tokens["attention_mask"].to(device))
        masks = torch.stack([model.domain_mask(e.domain) for e in batch])
        logits = (users @ model.item_table.t()).masked_fill(~masks, float("-inf"))
        targets = model.item_rows([e.item_id for e in batch]).to(device)
        return nn.functional.cross_entropy(logits, targets)

    def step(self, model: Any, batch: Sequence[Example], optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> float:
        return dense_step(model, self.loss(model, batch, generator), optimizer)

    def user_embeddings(self, model: Any, examples: Sequence[Example]) -> np.ndarray:
        out = [model.encode_texts([e.text(model.config.max_tokens) for e in
                                   examples[i:i + 32]]).cpu().float().numpy()
               for i in range(0, len(examples), 32)]
        return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)

    def write_full_bundle(self, model: Any, out_dir: Path, *, version: str,
                          parent: str | None, gate: dict[str, Any], metrics: dict[str, Any],
                          offsets: dict[str, int]) -> Path:
        from trainer.online.publishing import build_full_bundle

        return build_full_bundle(model, out_dir, version=version, parent=parent, gate=gate,
                                 metrics=metrics, offsets=offsets)


# --- EntityGraph ---------------------------------------------------------------------


class EntityGraphOnline:
    name = "entitygraph"
    weights_dir = "entitygraph"
    # a step's cost is mostly per-step overhead: large steps give thousands of examples/s
    default_batch = 256
    # behind, steps of 1 024: 1.55x the examples/s of steps of 256 (in-process, new examples
    # only, 4 000-entity stream, docs/benchmarks.md)
    catchup_factor = 4
    # one pass over a short stream leaves zero-shot users at popularity's level (default
    # synthetic world: HR@10 0.32-0.36 vs 0.33). Three replayed steps per step: 0.37-0.42
    # in six runs; one: 0.34-0.40 in nine (one below the quality test's margin) at about
    # 1.4x the rate (docs/benchmarks.md: a replayed step costs as much as a new one)
    default_replay = 3
    # at 3 000-6 000 examples/s: a gated publication (0.2-0.6 s) every 20-30 s, not
    # every second or two as EmbedMe's 5 000 would give
    default_publish_every = 100_000
    # its ops are small (a step is ~10 ms): on 2 shared cores a second intra-op thread
    # mostly waits for the first, and one thread measured 5x the rate of two
    torch_threads = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._vectors: Any = None  # EntityVectorCache of the title encoder, built once
        self._source: str | None = None  # that encoder's directory (None: MiniLM)
        # the title each entity's row was made from (checkpointed): what a rebuild under
        # another encoder re-encodes
        self._titles: dict[str, str] = {}
        self._checked: Any = None  # the model whose rows were checked against the encoder
        # entity rows per example id (`_example_rows`), for one model; room for the
        # recent and held-out windows, where replay and the gate read them again
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._rows_model: Any = None
        self._rows_cap = 2 * (settings.trainer_recent_window + settings.trainer_holdout_window)
        self._dom_key: tuple[int, int] | None = None  # `_domain_logits`' item-domain index
        self._dom_rows = torch.zeros(0, dtype=torch.long)
        self._dom_index: dict[str, int] = {}
        # the knowledge graph (MEKB_TRAINER_KG_DIM > 0, trainer/online/knowledge.py):
        # built once, on the first poll, for one model
        self._kg_model: Any = None
        self._kg_rows: dict[str, int] = {}  # MeKB entity id -> the model's TransE row
        self._sampler: Any = None  # TripleSampler over the graph's triples
        self.last_kg_loss: float | None = None  # TransE loss of the last step
        # where the item agent's edges come from (a function: tests give records)
        self.item_records: Callable[[], Iterable[bytes]] = self._read_item_entities
        self._store: Any = None  # MEKB_TRAINER_KG_PATH's graph, read at once: a bad file
        if settings.trainer_kg_dim:  # stops the trainer when it starts, not later
            from trainer.online.knowledge import load_store

            self._store = load_store(settings)

    def _cache(self, model: Any) -> Any:
        """The entity-vector cache of the title encoder: MEKB_TRAINER_ENCODER, else the
        model's own. In memory: the model's entity table is the persistent store of every
        vector (checkpointed and exported), so no entity is encoded twice."""
        from trainer.entitygraph.vectors import EntityVectorCache, TitleEncoder

        if self._vectors is None:
            source = self.settings.trainer_encoder or model.config.encoder
            encoder = TitleEncoder(source)
            if encoder.dim != model.vector_dim:
                logger.warning("title encoder %s gives %d-dim vectors, the model reads %d: "
                               "using the model's own encoder", source, encoder.dim,
                               model.vector_dim)
                source = model.config.encoder
                encoder = TitleEncoder(source)
            self._vectors, self._source = EntityVectorCache(None, encoder), source
        return self._vectors

    def _check_encoder(self, model: Any, optimizer: torch.optim.Optimizer) -> None:
        """Rebuild the entity vectors when the title encoder is not the one they came
        from (keyed by its identity: `TitleEncoder.fingerprint`, a digest of its config
        and weights, so a fine-tuned encoder at the same path counts as another): every
        row whose title is known is re-encoded (batched, once) and its Adam moments
        reset, and the model records the new encoder. The tower then trains on in the
        new space; rows of unknown title (a model loaded from a bundle) keep theirs."""
        if self._checked is model:
            return
        self._checked = model
        cache = self._cache(model)
        new_fp, old_fp = cache.encoder.fingerprint, model.config.encoder_fingerprint
        if new_fp == old_fp:
            return
        from dataclasses import replace

        ids = [e for e in model.entity_ids if e in self._titles] if old_fp else []
        if ids:
            vectors = torch.from_numpy(cache.get(ids, [self._titles[e] for e in ids]))
            rows = torch.tensor([model._erow[e] for e in ids], dtype=torch.long)
            table = model.entity_table
            with torch.no_grad():
                table.index_copy_(0, rows, vectors.to(table.dtype))
            state = optimizer.state.get(table) or {}
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key].index_fill_(0, rows, 0.0)
        model.config = replace(model.config, encoder=self._source, encoder_fingerprint=new_fp)
        if old_fp:
            logger.warning("title encoder changed (%s...: was %s...): %d of %d entity vectors "
                           "recomputed from their titles", new_fp[:12], old_fp[:12],
                           len(ids), model.n_entities)

    def pretrained(self) -> Any:
        from trainer.entitygraph.model import EntityGraph, EntityGraphConfig
        from trainer.entitygraph.vectors import EntityVectorCache, TitleEncoder

        s = self.settings
        encoder = TitleEncoder(s.trainer_encoder)
        self._vectors, self._source = EntityVectorCache(None, encoder), s.trainer_encoder
        # entity dropout 0.1: the offline default moved to 0.5 together with the free
        # user vectors, which the live trainer lacks; its quality was measured at 0.1
        config = EntityGraphConfig(dim=s.trainer_dim, encoder=s.trainer_encoder,
                                   dropout=LIVE_ENTITY_DROPOUT,
                                   k_star=s.k_star, encoder_fingerprint=encoder.fingerprint,
                                   kg_dim=s.trainer_kg_dim, kg_weight=s.trainer_kg_weight)
        torch.manual_seed(s.trainer_seed)
        return EntityGraph(config, encoder.dim)

    def can_serve(self, model: Any) -> bool:
        # without entity rows every user would get the same embedding
        return bool(model.n_entities)

    def checkpoint_extra(self, model: Any) -> dict[str, Any]:
        kg = {} if model.transe is None else {"kg_entity_ids": list(model.kg_entity_ids),
                                              "kg_relation_ids": list(model.kg_relation_ids)}
        return {"config": {**model.config.to_json(), "vector_dim": model.vector_dim},
                "entity_ids": list(model.entity_ids),
                "entity_titles": [self._titles.get(e, "") for e in model.entity_ids], **kg}

    def restore(self, state: TrainerState, weights: dict[str, Tensor]) -> Any:
        from trainer.entitygraph.model import EntityGraph, EntityGraphConfig

        raw = state.extra["config"]
        model = EntityGraph(EntityGraphConfig.from_json(raw), int(raw["vector_dim"]))
        ents = [str(e) for e in state.extra.get("entity_ids", [])]
        # (checkpoints written before titles were kept have none: no rebuild for those)
        titles = state.extra.get("entity_titles") or [""] * len(ents)
        self._titles = {e: str(t) for e, t in zip(ents, titles, strict=True) if t}
        if weights["entity_table"].shape[0] != len(ents) or \
                weights["item_table"].shape[0] != len(state.item_ids):
            raise RuntimeError("checkpoint tables do not match its entity/item ids")
        model.entity_ids, model._erow = ents, {e: i for i, e in enumerate(ents)}
        model.item_ids = list(state.item_ids)
        model.item_domains = list(state.item_domains)
        model._row = {item: i for i, item in enumerate(model.item_ids)}
        model.item_table = nn.Parameter(torch.empty_like(weights["item_table"]))
        model.entity_table = nn.Parameter(torch.empty_like(weights["entity_table"]),
                                          requires_grad=model.config.finetune_entities)
        if "transe.entities.weight" in weights:  # a knowledge-graph-tied model
            model.attach_kg(int(weights["transe.entities.weight"].shape[0]) - 1,
                            int(weights["transe.relations.weight"].shape[0]), {},
                            entity_ids=state.extra.get("kg_entity_ids", ()),
                            relation_ids=state.extra.get("kg_relation_ids", ()))
        model.load_state_dict(weights, strict=True)
        return model

    def load_dir(self, path: Path) -> Any:
        from trainer.entitygraph.model import EntityGraph

        return EntityGraph.load(path)

    def optimizer(self, model: Any) -> torch.optim.Optimizer:
        from trainer.entitygraph.train import EntityGraphTrainConfig, make_optimizer

        optimizer = make_optimizer(model, EntityGraphTrainConfig())
        optimizer.param_groups[1]["lr"] = ITEM_LR  # [dense, item table, entity table]
        for group in optimizer.param_groups:  # one kernel per op over the small tensors
            group["foreach"] = True
        return optimizer

    def _read_item_entities(self) -> list[bytes]:
        from trainer.online.knowledge import read_item_entities

        return read_item_entities(self.settings)

    def _ensure_kg(self, model: Any, optimizer: torch.optim.Optimizer) -> None:
        """Build the knowledge graph once, when the first examples arrive
        (trainer/online/knowledge.py), and tie the model to it: a model without a
        TransE part gets one when MEKB_TRAINER_KG_DIM > 0 (its projection starts at
        zero: the entity vectors do not move until trained); a
        model with one (checkpoint, registry) keeps its rows, appends the graph's new
        nodes and relations and links its entities that became nodes. A model that has
        a TransE part keeps training it even with MEKB_TRAINER_KG_DIM=0 (its config is
        kept, as every other model setting)."""
        from dataclasses import replace

        from trainer.online.knowledge import TripleSampler, align, build_graph, load_store

        if self._kg_model is model:
            return
        self._kg_model = model
        s = self.settings
        if model.transe is None and not s.trainer_kg_dim:
            return
        store = self._store if self._store is not None else load_store(s)
        graph = build_graph(store, self.item_records())
        self._store = None  # (the graph holds what it needs)
        if s.trainer_kg_dim and model.config.kg_weight != s.trainer_kg_weight:
            model.config = replace(model.config, kg_weight=s.trainer_kg_weight)
        if model.transe is None:
            model.config = replace(model.config, kg_dim=s.trainer_kg_dim)
            al = align(graph, [], [])
            model.attach_kg(len(al.new_entities), len(al.new_relations), al.entity_rows,
                            entity_ids=al.new_entities, relation_ids=al.new_relations)
            # the dense group, in the order make_optimizer gives a restored model
            optimizer.param_groups[0]["params"].extend(
                p for n, p in model.named_parameters() if n.startswith(("transe.", "kg_proj.")))
            linked = int((model.entity_kg_row >= 0).sum())
        else:
            transe = model.transe
            names = list(model.kg_entity_ids)[:transe.n_entities]
            rel_names = list(model.kg_relation_ids)[:transe.relations.num_embeddings]
            al = align(graph, names + [""] * (transe.n_entities - len(names)),
                       rel_names + [""] * (transe.relations.num_embeddings - len(rel_names)))
            if al.new_entities or al.new_relations:
                old_e, old_r, n = transe.entities.weight, transe.relations.weight, \
                    transe.n_entities
                model.grow_kg(al.new_entities, al.new_relations)
                _grow_in_optimizer(optimizer, old_e, transe.entities.weight, at=n)
                _grow_in_optimizer(optimizer, old_r, transe.relations.weight,
                                   at=old_r.shape[0])
            linked = model.link_kg(al.entity_rows)
        self._kg_rows = al.entity_rows
        self._sampler = TripleSampler(al.triples, model.transe.n_entities)
        logger.info("knowledge graph tied: %d TransE nodes (%d new), %d relations, %d triples; "
                    "%d entity rows linked now", model.transe.n_entities, len(al.new_entities),
                    model.transe.relations.num_embeddings, len(al.triples), linked)

    def prepare(self, model: Any, examples: Sequence[Example],
                optimizer: torch.optim.Optimizer) -> int:
        self._check_encoder(model, optimizer)
        if examples:  # not on an idle poll: by the first examples the items they name
            self._ensure_kg(model, optimizer)  # are linked (a fresh system starts empty)
        # the ids without a row, as one C-level set operation (a poll holds ~10^4 ids,
        # almost all known in a steady stream); titles are looked up for those only
        unknown = set().union(*(ex.entity_ids for ex in examples)).difference(model._erow)
        if not unknown:
            return 0
        new: dict[str, str] = {}
        for ex in examples:
            for eid, title in zip(ex.entity_ids, ex.titles, strict=True):
                if eid in unknown:
                    new.setdefault(eid, title)
        # all of the poll's new entities in one batched encoder run, before its steps:
        # the steps never run the encoder
        vectors = self._cache(model).get(list(new), list(new.values()))
        self._titles.update(new)
        old = model.entity_table
        model.add_entities(list(new), vectors, self._kg_rows)
        if model.entity_table is not old:
            replace_param_in_optimizer(optimizer, old, model.entity_table)
        return len(new)

    def _example_rows(self, model: Any, ex: Example) -> tuple[np.ndarray, np.ndarray]:
        """An example's entity rows and scores (entities without a row left out), kept
        per example id: a row never changes once given, so a replayed example costs a
        dict hit (one with unresolved entities is not kept: a later row may fill it)."""
        if self._rows_model is not model:
            self._rows, self._rows_model = {}, model
        hit = self._rows.get(ex.example_id)
        if hit is not None:
            return hit
        n = len(ex.entity_ids)  # (map: one C-level dict lookup per id)
        rows = np.fromiter(map(model._erow.get, ex.entity_ids, itertools.repeat(-1, n)),
                           np.int64, n)
        scores = np.asarray(ex.scores, dtype=np.float32)
        if (rows < 0).any():
            keep = rows >= 0
            return rows[keep], scores[keep]
        if len(self._rows) >= self._rows_cap:  # drop the oldest half
            for key in list(itertools.islice(self._rows, len(self._rows) // 2)):
                del self._rows[key]
        self._rows[ex.example_id] = (rows, scores)
        return rows, scores

    def _inputs(self, model: Any, examples: Sequence[Example]) -> tuple[Tensor, Tensor, Tensor]:
        """Padded entity rows, scores and mask (entities without a row are left out)."""
        per = [self._example_rows(model, ex) for ex in examples]
        lens = np.fromiter((len(r) for r, _ in per), np.int64, len(per))
        width = max(1, int(lens.max(initial=0)))
        rows = np.zeros((len(per), width), dtype=np.int64)
        scores = np.zeros((len(per), width), dtype=np.float32)
        mask = np.zeros((len(per), width), dtype=bool)
        total = int(lens.sum())
        if total:
            which = np.repeat(np.arange(len(per)), lens)
            pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
            rows[which, pos] = np.concatenate([r for r, _ in per])
            scores[which, pos] = np.concatenate([s for _, s in per])
            mask[which, pos] = True
        return torch.from_numpy(rows), torch.from_numpy(scores), torch.from_numpy(mask)

    def _domain_logits(self, model: Any, users: Tensor, batch: Sequence[Example]) -> Tensor:
        """`domain_logits` with the items' domain index kept until the table grows."""
        if self._dom_key != (id(model), model.n_items):
            index: dict[str, int] = {}
            self._dom_rows = torch.tensor([index.setdefault(d, len(index))
                                           for d in model.item_domains], dtype=torch.long)
            self._dom_index, self._dom_key = index, (id(model), model.n_items)
        ex_dom = torch.tensor([self._dom_index.get(e.domain, -1) for e in batch],
                              dtype=torch.long)
        mask = ex_dom.unsqueeze(1) == self._dom_rows.unsqueeze(0)
        return (users @ model.item_embeddings().t()).masked_fill(~mask, float("-inf"))

    @staticmethod
    def _dropout(model: Any, mask: Tensor, generator: torch.Generator) -> Tensor:
        if model.config.dropout > 0:  # entity dropout, as offline (trainer/entitygraph)
            mask = mask & (torch.rand(mask.shape, generator=generator) >= model.config.dropout)
        return mask

    def loss(self, model: Any, batch: Sequence[Example], generator: torch.Generator) -> Tensor:
        rows, scores, mask = self._inputs(model, batch)
        users = model.encode_rows(rows, scores, self._dropout(model, mask, generator))
        targets = model.item_rows([e.item_id for e in batch])
        return nn.functional.cross_entropy(self._domain_logits(model, users, batch), targets)

    def _kg_triples(self, model: Any, nodes: Tensor, generator: torch.Generator) -> Tensor:
        """[2T, 3]: MEKB_TRAINER_KG_BATCH triples (half of them incident to `nodes`,
        trainer/online/knowledge.py) then as many corrupted ones (head or tail replaced,
        trainer/kgrec/transe.py `corrupt`); [0, 3] without a graph or triples."""
        from trainer.kgrec.transe import corrupt

        if self._sampler is None or not len(self._sampler):
            return torch.zeros((0, 3), dtype=torch.long)
        triples = self._sampler.sample(nodes, self.settings.trainer_kg_batch, generator)
        return torch.cat([triples, corrupt(triples, model.transe.n_entities, generator)])

    def _dense_kg_step(self, model: Any, batch: Sequence[Example],
                       optimizer: torch.optim.Optimizer, generator: torch.Generator) -> float:
        """The plain step (a frozen entity table), plus the TransE loss when tied."""
        from trainer.kgrec.transe import kg_margin_loss

        rec = self.loss(model, batch, generator)
        loss = rec
        transe = model.transe
        if transe is not None:
            both = self._kg_triples(model, torch.zeros(0, dtype=torch.long), generator)
            if len(both):
                dist = transe.distance(both)
                half = len(both) // 2
                kg = kg_margin_loss(dist[:half], dist[half:], model.config.kg_margin)
                loss = rec + model.config.kg_weight * kg
                self.last_kg_loss = float(kg.detach())
        dense_step(model, loss, optimizer)
        if transe is not None:
            transe.renorm()
        return float(rec.detach())

    def step(self, model: Any, batch: Sequence[Example], optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> float:
        """The step on the batch's entities only: their rows are gathered once into a
        leaf [U, H] that the tower reads through `encode_unique`, and Adam updates only
        those rows of the entity table (`adam_rows`: SparseAdam's lazy moments) — no
        backward into, nor optimiser pass over, the whole table. A frozen table takes
        the plain step.

        Knowledge-graph-tied: the TransE rows of the batch's linked entities and of a
        fixed sample of triples (with their corruptions) are gathered the same way into
        one leaf; the tower reads entity row + kg_proj(TransE row) (`encode_unique` with
        `kg_vectors`: the tie is never materialised per entity), the loss adds kg_weight
        x the TransE margin loss of the sample, and Adam and the unit-ball
        renormalisation touch only those TransE rows. Returns the recommendation loss
        (the TransE loss: `last_kg_loss`)."""
        from trainer.kgrec.transe import kg_margin_loss, transe_distance

        table = model.entity_table
        if not table.requires_grad:
            return self._dense_kg_step(model, batch, optimizer, generator)
        rows, scores, mask = self._inputs(model, batch)
        mask = self._dropout(model, mask, generator)
        used = rows[mask]
        index = torch.zeros_like(rows)  # padding and dropped entities: row 0, masked out
        if used.numel():
            uniq, inverse = torch.unique(used, return_inverse=True)
            index.masked_scatter_(mask, inverse)
        else:
            uniq = rows.new_zeros(1)
        sub = table.detach().index_select(0, uniq).requires_grad_()
        leaves, kg_vectors = [sub], None
        transe, kg = model.transe, None
        if transe is not None:
            kg_of = model.entity_kg_row.index_select(0, uniq)
            both = self._kg_triples(model, kg_of, generator)
            ktable = transe.entities.weight
            kuniq, kinv = torch.unique(torch.cat([kg_of.clamp(min=0), both[:, 0], both[:, 2]]),
                                       return_inverse=True)
            ksub = ktable.detach().index_select(0, kuniq).requires_grad_()
            leaves.append(ksub)
            kvec = ksub.index_select(0, kinv)
            u, m = len(uniq), len(both)
            kg_vectors = kvec[:u] * (kg_of >= 0).to(kvec.dtype).unsqueeze(-1)
            if m:
                dist = transe_distance(kvec[u:u + m], transe.relations(both[:, 1]),
                                       kvec[u + m:], transe.p)
                kg = kg_margin_loss(dist[:m // 2], dist[m // 2:], model.config.kg_margin)
        users = model.encode_unique(sub, index, scores, mask, kg_vectors)
        targets = model.item_rows([e.item_id for e in batch])
        loss = nn.functional.cross_entropy(self._domain_logits(model, users, batch), targets)
        total = loss if kg is None else loss + model.config.kg_weight * kg
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        sparse = {id(table)} | ({id(transe.entities.weight)} if transe is not None else set())
        rest = [p for p in model.parameters() if id(p) not in sparse]
        torch.nn.utils.clip_grad_norm_([*rest, *leaves], GRAD_CLIP)  # the dense step's norm
        optimizer.step()  # the tables have no .grad: Adam skips them, adam_rows updates them
        if sub.grad is not None:
            adam_rows(optimizer, table, uniq, sub.grad)
        if transe is not None:
            if ksub.grad is not None:
                adam_rows(optimizer, ktable, kuniq, ksub.grad)
            with torch.no_grad():  # TransE's unit ball, on the rows this step moved
                ktable.index_copy_(0, kuniq, ktable.index_select(0, kuniq).renorm(2, 0, 1.0))
            if kg is not None:
                self.last_kg_loss = float(kg.detach())
        return float(loss.detach())

    def user_embeddings(self, model: Any, examples: Sequence[Example]) -> np.ndarray:
        out = []
        for i in range(0, len(examples), EMBED_CHUNK):
            rows, scores, mask = self._inputs(model, examples[i:i + EMBED_CHUNK])
            out.append(model.encode_rows(rows, scores, mask).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)

    def write_full_bundle(self, model: Any, out_dir: Path, *, version: str,
                          parent: str | None, gate: dict[str, Any], metrics: dict[str, Any],
                          offsets: dict[str, int]) -> Path:
        from trainer.entitygraph.export import write_user_tower
        from trainer.export import item_arrays

        if out_dir.exists():
            shutil.rmtree(out_dir)  # a leftover of a crashed attempt: start clean
        out_dir.mkdir(parents=True)
        model.save(out_dir / self.weights_dir)
        fields = write_user_tower(model, out_dir)
        table, items = item_arrays(model)
        np.save(out_dir / ITEM_FILES[0], table, allow_pickle=False)
        (out_dir / ITEM_FILES[1]).write_text(json.dumps(items) + "\n", encoding="utf-8")
        manifest = {**fields, "version": version, "parent": parent, "kind": "full",
                    "created_at": time.time(), "metrics": metrics, "gate": gate,
                    "training_offsets": offsets,
                    "files": {n: sha256_file(out_dir / n) for n in bundle_files(out_dir)}}
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return out_dir


_KINDS: dict[str, Any] = {"embedme": EmbedMeOnline, "entitygraph": EntityGraphOnline}


# --- kind-independent bundle work ---------------------------------------------------


def build_items_bundle(tower: ModelVersion, out_dir: Path, *, table: np.ndarray,
                       item_ids: Sequence[str], domains: Sequence[str], version: str,
                       parent: str, gate: dict[str, Any], metrics: dict[str, Any],
                       offsets: dict[str, int]) -> Path:
    """An `items` version of `tower` (the active version) with a refitted item table: the
    tower's serving files are copied as they are (whatever its kind: everything but its
    items and trainer weights), its manifest's tower fields inherited."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    weights = {k.weights_dir for k in (EmbedMeOnline, EntityGraphOnline)}
    for name in tower.files:
        if name in ITEM_FILES or name.split("/", 1)[0] in weights:
            continue
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tower.path / name, out_dir / name)
    np.save(out_dir / ITEM_FILES[0], np.ascontiguousarray(table, dtype=np.float32),
            allow_pickle=False)
    (out_dir / ITEM_FILES[1]).write_text(json.dumps(
        {"item_ids": list(item_ids), "domains": list(domains)}) + "\n", encoding="utf-8")
    manifest = {k: v for k, v in tower.manifest.items() if k not in OWN_FIELDS}
    manifest.update(version=version, parent=parent, kind="items", created_at=time.time(),
                    n_items=len(item_ids), metrics=metrics, gate=gate,
                    training_offsets=offsets,
                    files={n: sha256_file(out_dir / n) for n in bundle_files(out_dir)})
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_version(registry: Registry, mv: ModelVersion, kind: OnlineKind,
                 max_hops: int = 16) -> Any | None:
    """The trainer model of a registry version of `kind` (weights of it or of its
    lineage, with mv's own item table on top); None if no version there carries them."""
    from trainer.online.publishing import overlay_items

    if mv.model_kind != kind.name:
        return None
    current: ModelVersion | None = mv
    for _ in range(max_hops):
        if current is None:
            return None
        weights = current.path / kind.weights_dir
        if (weights / "model.safetensors").is_file():
            model = kind.load_dir(weights)
            if current.version != mv.version:
                overlay_items(model, mv.path)
            return model
        if not current.parent:
            return None
        try:
            current = registry.get(current.parent)
        except VersionNotFound:
            return None
    return None
