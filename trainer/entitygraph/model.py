"""EntityGraph: the user is attention over the entities of their MeKB.

- Entity vectors `entity_table [n_entities, H]` live in the pretrained encoder's space:
  initialised from the cached title embeddings (trainer/entitygraph/vectors.py), then
  optionally fine-tuned. An entity never seen in training keeps its raw title vector,
  which is in the same space — so a serving replica can embed a MeKB with new entities
  without a new model.
- User tower (no transformer): additive attention over the MeKB's entity vectors,
  logit_j = qᵀ tanh(W v_j + b) + β·log MeKBScore_j (β ≥ 0, learnt: the MeKB score is
  the attention prior), padding masked; pooled = Σ_j a_j v_j; an MLP maps it to K.
  Cost per user is linear in the MeKB size.
- Item tower as EmbedMe: an ID table [n_items, K] (grows, rows keep their index),
  dot-product score, full softmax over one domain's items.

The ONNX user tower (trainer/entitygraph/export.py) takes the gathered vectors, the
scores and the mask, so serving gathers vectors from the bundle's entity table (and
title vectors for new entities) — `encode` below is exactly that graph.
Persistence: safetensors + JSON only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from trainer.kgrec.transe import TransE
from trainer.model import ITEM_INIT_STD, ModelError

KIND = "entitygraph"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ITEMS = "items.json"
ENTITIES = "entities.json"
KG_IDS = "kg.json"  # with a tied knowledge graph: the node and relation id of each row
# log of a zero score (padding, or an entity with idf 0) is clamped here, not -inf:
# the mask does the masking, the prior only ranks real entities.
MIN_SCORE = 1e-6
NEG = -1e9


@dataclass(frozen=True)
class EntityGraphConfig:
    dim: int = 64  # K (user and item vectors)
    hidden: int = 256  # MLP hidden width
    attn_dim: int = 16  # additive attention width (chosen on validation)
    prior: float = 1.0  # initial β (weight of log MeKBScore); 0 with learn_prior=False: none
    learn_prior: bool = True
    # training: each MeKB entity dropped with this probability (0.5 with the free user
    # vectors, chosen on 8 validation seeds; the live trainer pins its own)
    dropout: float = 0.5
    # a per-item popularity bias, as one more dimension: users end in a constant 1 and
    # items in their bias, so scores stay plain dot products (serving needs no change)
    item_bias: bool = False
    # Knowledge-graph tying (0 = off): an entity linked to a KG node gets
    # P·t(node) added to its vector, t a TransE embedding of this width trained on the
    # KG's triples beside the recommendation loss (trainer/kgrec/transe.py), P learnt
    # and zero at the start (training begins from the title vectors)
    kg_dim: int = 0
    kg_weight: float = 0.1  # weight of the TransE margin loss
    kg_margin: float = 1.0
    finetune_entities: bool = True  # False: entity vectors stay the encoder's
    pretrained: bool = True  # False: random entity vectors (the w/o-PLM ablation)
    encoder: str | None = None  # HF directory of the title encoder; None = MiniLM
    k_star: float = 5.0  # s(k) threshold of the MeKB score (mekb.scoring)
    # sha256 of the title encoder whose vectors initialised the table (vectors.py): a
    # new entity's title vector is only comparable when computed by the same encoder
    encoder_fingerprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EntityGraphConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class EntityGraph(nn.Module):
    def __init__(self, config: EntityGraphConfig, vector_dim: int) -> None:
        super().__init__()
        self.config = config
        self.vector_dim = vector_dim
        self.attn = nn.Linear(vector_dim, config.attn_dim)
        self.query = nn.Parameter(torch.randn(config.attn_dim) / config.attn_dim ** 0.5)
        # β = softplus(raw) ≥ 0 so a larger prior can only move weight toward an entity
        raw = _inv_softplus(config.prior) if config.prior > 0 else -30.0
        self.prior_raw = nn.Parameter(torch.tensor(float(raw)),
                                      requires_grad=config.learn_prior)
        self.mlp = nn.Sequential(nn.Linear(vector_dim, config.hidden), nn.GELU(),
                                 nn.Linear(config.hidden, config.dim))
        self.entity_table = nn.Parameter(torch.empty(0, vector_dim),
                                         requires_grad=config.finetune_entities)
        self.item_table = nn.Parameter(torch.empty(0, self.out_dim))
        self.entity_ids: list[str] = []
        self._erow: dict[str, int] = {}
        self.transe: TransE | None = None  # attach_kg()
        self.kg_proj: nn.Linear | None = None
        self.register_buffer("entity_kg_row", torch.zeros(0, dtype=torch.long))
        # the KG node / relation id of each TransE row (what a trainer restarted on a
        # rebuilt graph maps it onto); empty when the graph's ids were not given
        self.kg_entity_ids: list[str] = []
        self.kg_relation_ids: list[str] = []
        self.item_ids: list[str] = []
        self.item_domains: list[str] = []
        self._row: dict[str, int] = {}

    @property
    def out_dim(self) -> int:
        """Width of user and item vectors: K, plus the bias dimension."""
        return self.config.dim + int(self.config.item_bias)

    # ---- user tower -------------------------------------------------------------------

    @property
    def prior_weight(self) -> Tensor:
        return nn.functional.softplus(self.prior_raw)

    def attention_logits(self, vectors: Tensor) -> Tensor:
        """[..., H] → [...]: qᵀ tanh(W v + b), a function of the entity alone."""
        return torch.tanh(self.attn(vectors)) @ self.query

    def _weights(self, logit: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        keep = mask.to(logit.dtype)
        logit = logit + self.prior_weight * torch.log(scores.clamp(min=MIN_SCORE))
        logit = logit * keep + NEG * (1.0 - keep)
        return torch.softmax(logit, dim=-1) * keep

    def attention(self, vectors: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        """[B, L] weights: softmax over the unmasked entities (rows sum to 1; an empty
        MeKB gets all zeros)."""
        return self._weights(self.attention_logits(vectors), scores, mask)

    def _finish(self, user: Tensor) -> Tensor:
        if self.config.item_bias:
            user = torch.cat([user, torch.ones_like(user[..., :1])], dim=-1)
        return user

    def encode(self, vectors: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        """vectors [B, L, H], scores [B, L] (MeKBScore), mask [B, L] (1 = entity) → [B, K]."""
        weights = self.attention(vectors, scores, mask)
        pooled = (weights.unsqueeze(-1) * vectors).sum(1)
        return self._finish(self.mlp(pooled))

    # Serving splits the tower at its first linear layer. Everything up to it depends on
    # one entity alone, so it is computed once per entity and model version
    # (`entity_features`: the attention logit and W1·v, no bias); per user only the
    # softmax, a weighted sum of `hidden`-wide rows and the rest of the MLP remain
    # (`encode_features`). Since the weights sum to 1, Σ a_j (W1 v_j) + b1 = W1 (Σ a_j
    # v_j) + b1: the same user as `encode` (for an empty MeKB both pool to 0 before b1).

    def entity_features(self, vectors: Tensor) -> Tensor:
        """[..., H] → [..., 1 + hidden]: attention logit, then W1·v."""
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        return torch.cat([self.attention_logits(vectors).unsqueeze(-1),
                          vectors @ first.weight.t()], dim=-1)

    def encode_features(self, features: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        """`encode` from `entity_features` rows [B, L, 1 + hidden]."""
        weights = self._weights(features[..., 0], scores, mask)
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        # one batched matmul over whole rows, then drop the logit column: slicing the
        # [B, L, F] input first would copy it
        pooled = torch.bmm(weights.unsqueeze(1), features).squeeze(1)
        hidden = pooled[:, 1:] + first.bias
        return self._finish(self.mlp[2](self.mlp[1](hidden)))

    def encode_unique(self, vectors: Tensor, index: Tensor, scores: Tensor,
                      mask: Tensor, kg_vectors: Tensor | None = None) -> Tensor:
        """`encode(vectors[index], ...)` from the batch's entities given once each:
        vectors [U, H], index [B, L] into them. Training's form: the attention logit is
        computed once per entity and the pooling is an embedding bag, so the backward
        pass never materialises a [B, L, H] gather (the continuous trainer's step).

        `kg_vectors` [U, kg_dim] (KG-tied; zero rows for entities not linked): the same
        as `vectors + kg_proj(kg_vectors)`, without projecting every entity to H: the
        attention reads (W·P)·t and the pooled t is projected once per user (P is linear,
        the pooling weights sum to 1 or 0)."""
        hidden = self.attn(vectors)
        if kg_vectors is not None:
            assert self.kg_proj is not None
            hidden = hidden + kg_vectors @ (self.attn.weight @ self.kg_proj.weight).t()
        weights = self._weights((torch.tanh(hidden) @ self.query)[index], scores, mask)
        pooled = nn.functional.embedding_bag(index, vectors, per_sample_weights=weights,
                                             mode="sum")
        if kg_vectors is not None:
            assert self.kg_proj is not None
            pooled = pooled + self.kg_proj(nn.functional.embedding_bag(
                index, kg_vectors, per_sample_weights=weights, mode="sum"))
        return self._finish(self.mlp(pooled))

    @property
    def feature_dim(self) -> int:
        return 1 + self.config.hidden

    def encode_rows(self, rows: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        """`encode` with entity-table rows [B, L] (training: the table gets gradients)."""
        return self.encode(self.entity_vectors(rows), scores, mask)

    def entity_vectors(self, rows: Tensor | None = None) -> Tensor:
        """The vectors the user tower reads (all rows, or `rows`): the entity table,
        plus the projected TransE embedding of each KG-linked entity when tied."""
        table = self.entity_table if rows is None else self.entity_table[rows]
        if self.transe is None or self.kg_proj is None:
            return table
        kg_row = self.entity_kg_row if rows is None else self.entity_kg_row[rows]
        return table + self.kg_tie(kg_row, self.transe.entities(kg_row.clamp(min=0)))

    def kg_tie(self, kg_row: Tensor, kg_vectors: Tensor) -> Tensor:
        """What tying adds to entities whose KG rows are `kg_row` (-1: not linked, adds
        0) given their TransE vectors `kg_vectors` (any row where not linked)."""
        assert self.kg_proj is not None
        linked = (kg_row >= 0).to(kg_vectors.dtype).unsqueeze(-1)
        return linked * self.kg_proj(kg_vectors)

    def attach_kg(self, n_kg_entities: int, n_relations: int,
                  kg_row: dict[str, int], *, entity_ids: Sequence[str] = (),
                  relation_ids: Sequence[str] = ()) -> None:
        """Tie entities to a knowledge graph: `kg_row` maps entity ids to KG node rows;
        `entity_ids`/`relation_ids` name the graph's nodes and relations (optional)."""
        dim = self.config.kg_dim
        self.transe = TransE(n_kg_entities, n_relations, dim)
        self.kg_proj = nn.Linear(dim, self.vector_dim, bias=False)
        nn.init.zeros_(self.kg_proj.weight)
        self.entity_kg_row = torch.tensor([kg_row.get(e, -1) for e in self.entity_ids],
                                          dtype=torch.long)
        self.kg_entity_ids = [str(e) for e in entity_ids]
        self.kg_relation_ids = [str(r) for r in relation_ids]

    def grow_kg(self, entity_ids: Sequence[str], relation_ids: Sequence[str]) -> None:
        """Append knowledge-graph nodes and relations: new TransE rows, drawn as TransE
        draws them; existing rows keep their index (the "no linked entity" row stays
        last). The caller moves the optimiser to the new Parameters."""
        assert self.transe is not None
        transe, dim = self.transe, self.config.kg_dim
        bound = 6.0 / dim**0.5
        if entity_ids:
            old = transe.entities.weight.data
            fresh = torch.empty(len(entity_ids), dim, dtype=old.dtype,
                                device=old.device).uniform_(-bound, bound).renorm_(2, 0, 1.0)
            n = transe.n_entities
            transe.entities.weight = nn.Parameter(torch.cat([old[:n], fresh, old[n:]]))
            transe.entities.num_embeddings = transe.entities.weight.shape[0]
            transe.n_entities = n + len(entity_ids)
            self.kg_entity_ids += [str(e) for e in entity_ids]
        if relation_ids:
            old = transe.relations.weight.data
            fresh = nn.functional.normalize(torch.empty(
                len(relation_ids), dim, dtype=old.dtype, device=old.device
            ).uniform_(-bound, bound), dim=-1)
            transe.relations.weight = nn.Parameter(torch.cat([old, fresh]))
            transe.relations.num_embeddings = transe.relations.weight.shape[0]
            self.kg_relation_ids += [str(r) for r in relation_ids]

    def link_kg(self, kg_row: Mapping[str, int]) -> int:
        """Link entities not linked yet to their nodes in `kg_row`; returns how many."""
        rows = torch.tensor([kg_row.get(e, -1) for e in self.entity_ids], dtype=torch.long)
        fill = (self.entity_kg_row < 0) & (rows >= 0)
        self.entity_kg_row[fill] = rows[fill]
        return int(fill.sum())

    # ---- entities ---------------------------------------------------------------------

    @property
    def n_entities(self) -> int:
        return len(self.entity_ids)

    def add_entities(self, entity_ids: Sequence[str], vectors: np.ndarray | Tensor,
                     kg_row: Mapping[str, int] | None = None) -> None:
        """Append unseen entities with their initial vectors; known ones keep theirs.
        With a knowledge graph attached, `kg_row` links the new ones to their nodes."""
        vecs = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if vecs.shape != (len(entity_ids), self.vector_dim):
            raise ValueError(f"vectors {tuple(vecs.shape)} for {len(entity_ids)} entities "
                             f"of dim {self.vector_dim}")
        new: list[int] = []
        seen: set[str] = set()
        for i, e in enumerate(entity_ids):
            if e not in self._erow and e not in seen:
                seen.add(e)
                new.append(i)
        if not new:
            return
        old = self.entity_table.data
        self.entity_table = nn.Parameter(
            torch.cat([old, vecs[new].to(old.device, old.dtype)]),
            requires_grad=self.config.finetune_entities)
        for i in new:
            self._erow[entity_ids[i]] = len(self.entity_ids)
            self.entity_ids.append(str(entity_ids[i]))
        # entities added after a KG was attached are linked through `kg_row` (-1: not
        # a node of it, so no tie)
        links = kg_row or {}
        pad = torch.tensor([links.get(str(entity_ids[i]), -1) for i in new], dtype=torch.long)
        self.entity_kg_row = torch.cat([self.entity_kg_row, pad]) if self.transe is not None \
            else self.entity_kg_row

    def entity_row(self, entity_id: str) -> int | None:
        return self._erow.get(entity_id)

    # ---- item tower (as EmbedMe) ------------------------------------------------------

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def add_items(self, item_ids: Sequence[str], domains: Sequence[str]) -> list[int]:
        if len(item_ids) != len(domains):
            raise ValueError("item_ids and domains must have the same length")
        rows: list[int] = []
        new_ids: list[str] = []
        new_domains: list[str] = []
        pending: dict[str, int] = {}
        for item, domain in zip(item_ids, domains, strict=True):
            item = str(item)
            row = self._row.get(item, pending.get(item))
            if row is None:
                row = pending[item] = self.n_items + len(new_ids)
                new_ids.append(item)
                new_domains.append(str(domain))
            rows.append(row)
        if new_ids:
            old = self.item_table.data
            fresh = torch.randn(len(new_ids), self.out_dim, dtype=old.dtype,
                                device=old.device) * ITEM_INIT_STD
            if self.config.item_bias:
                fresh[:, -1] = 0.0
            self.item_table = nn.Parameter(torch.cat([old, fresh]))
            for item, domain in zip(new_ids, new_domains, strict=True):
                self._row[item] = len(self.item_ids)
                self.item_ids.append(item)
                self.item_domains.append(domain)
        return rows

    def item_rows(self, item_ids: Sequence[str]) -> Tensor:
        return torch.tensor([self._row[str(i)] for i in item_ids], dtype=torch.long)

    def has_item(self, item_id: str) -> bool:
        return str(item_id) in self._row

    def item_embeddings(self) -> Tensor:
        return self.item_table

    def domain_rows(self, domain: str) -> Tensor:
        return torch.tensor([i for i, d in enumerate(self.item_domains) if d == domain],
                            dtype=torch.long)

    # ---- persistence ------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        tmp = directory / f".{WEIGHTS}.tmp-{os.getpid()}"
        save_file(state, str(tmp), metadata={"format": "pt", "kind": KIND})
        os.replace(tmp, directory / WEIGHTS)
        kg = {} if self.transe is None else {
            "kg_entities": int(self.transe.n_entities),
            "kg_relations": int(self.transe.relations.num_embeddings)}
        if self.transe is not None and self.kg_entity_ids:
            (directory / KG_IDS).write_text(json.dumps(
                {"entities": self.kg_entity_ids, "relations": self.kg_relation_ids}) + "\n",
                encoding="utf-8")
        (directory / CONFIG).write_text(json.dumps(
            {**self.config.to_json(), "vector_dim": self.vector_dim, **kg}, indent=2,
            sort_keys=True) + "\n", encoding="utf-8")
        (directory / ITEMS).write_text(json.dumps(
            {"item_ids": self.item_ids, "domains": self.item_domains}) + "\n", encoding="utf-8")
        (directory / ENTITIES).write_text(json.dumps(
            {"entity_ids": self.entity_ids}) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, map_location: str | torch.device = "cpu") -> EntityGraph:
        directory = Path(directory)
        for name in (WEIGHTS, CONFIG, ITEMS, ENTITIES):
            if not (directory / name).is_file():
                raise ModelError(f"{directory} is not an EntityGraph directory (missing {name})")
        raw = json.loads((directory / CONFIG).read_text("utf-8"))
        if raw.get("kind") != KIND:
            raise ModelError(f"{directory}: model kind {raw.get('kind')!r}, not {KIND!r}")
        model = cls(EntityGraphConfig.from_json(raw), int(raw["vector_dim"]))
        items = json.loads((directory / ITEMS).read_text("utf-8"))
        ents = json.loads((directory / ENTITIES).read_text("utf-8"))
        state = load_file(str(directory / WEIGHTS), device=str(map_location))
        if state["item_table"].shape[0] != len(items["item_ids"]) or \
                state["entity_table"].shape[0] != len(ents["entity_ids"]):
            raise ModelError(f"{directory}: table rows do not match the item/entity ids")
        model.item_ids = [str(i) for i in items["item_ids"]]
        model.item_domains = [str(d) for d in items["domains"]]
        model._row = {item: i for i, item in enumerate(model.item_ids)}
        model.entity_ids = [str(e) for e in ents["entity_ids"]]
        model._erow = {e: i for i, e in enumerate(model.entity_ids)}
        if "kg_entities" in raw:
            ids = json.loads((directory / KG_IDS).read_text("utf-8")) \
                if (directory / KG_IDS).is_file() else {}
            model.attach_kg(int(raw["kg_entities"]), int(raw["kg_relations"]), {},
                            entity_ids=ids.get("entities", ()),
                            relation_ids=ids.get("relations", ()))
        model.item_table = nn.Parameter(torch.empty_like(state["item_table"]))
        model.entity_table = nn.Parameter(torch.empty_like(state["entity_table"]),
                                          requires_grad=model.config.finetune_entities)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(f"{directory}: weights do not match the architecture "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.to(map_location)


def _inv_softplus(y: float) -> float:
    return float(y + np.log(-np.expm1(-y)))
