"""Datasets for offline EmbedMe training and evaluation.

- `base`: the in-memory dataset (items with their entities, interactions).
- `amazon`, `atomic` (RecBole `.inter`/`.item`), `generic` (CSV/JSONL): loaders.
- `synthetic`: a cross-domain world with known entities, for fast tests.
- `scenario`: the CDR scenario of MeKB-Rec (positives, filters, 8:1:1, held-out
  overlapping users, buckets).
- `mekb`: per-user MeKB text from training interactions (via `mekb.scoring`).
"""
