"""EntityGraph (issue 15): a user tower that attends over the entity vectors of the
user's MeKB — the personal knowledge graph as the user's neighbourhood — with entity
vectors from the pretrained encoder's title embeddings (computed once per entity),
the MeKB score as attention prior and EmbedMe's ID item tower. No transformer call
per user. See model.py (architecture), vectors.py (title-vector cache), data.py
(MeKBs and training views), train.py (offline loop), export.py (ONNX), scorer.py
(harness method); trainer/kinds registers it as the `entitygraph` model kind."""
