"""The second paper's model family (papers/kg-multidomain-assistant.txt, DESIGN.md
"Second paper"): Base, KGE, MultD, MultD KGE, MultD GNN, MultD KGE+GNN and the SMF (BPR)
baseline, as evaluation-harness methods (`trainer.kgrec.scorers`).

One composable model (`base.KGRec`): an item encoder (ID table, optionally enhanced by
the linked entity's TransE embedding, eq. 5), a user encoder (ID table, eq. 1; shared +
domain-specific parts through a per-domain MLP, eq. 6; inductive attention GNNs in
place of the tables, eq. 7), inner-product score, margin ranking loss over sampled
negatives (eq. 2) plus, multi-task, the TransE margin loss on the knowledge graph
(eq. 3-4).
"""
