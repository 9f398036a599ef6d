"""Knowledge-graph data: triples (head, relation, tail) plus item -> entity links.

- `graph`: the in-memory `KnowledgeGraph` (numpy arrays, CSR neighbour lookup) and its
  on-disk form (one `.npz`).
- `recbole`: RecBole atomic `.kg` + `.link` files (ml-100k's Freebase graph).
- `wikidata`: entity -> entity claims from Wikidata JSON dumps (the linker's reader).
- `live`: the live system's own edges (item -> linked / brand / category / domain entity).
- `builder`: the shared constant-memory accumulator and its skipped-row report.
"""
