"""Dataset specs for the CLI: `--dataset NAME[:ARGS]` → a linked `Dataset`.

    synthetic[:SEED][:kg|:kg-only]           the synthetic world (trainer/data/synthetic.py),
                                             optionally with a knowledge graph
    ml100k[:genres3]                         MovieLens-100k from recbole (with its Freebase
                                             knowledge graph), action/drama or
                                             action/comedy/drama
    atomic:DIR[:NAME]                        RecBole atomic files DIR/NAME.inter, .item
    amazon:DOMAIN=REVIEWS[,META];DOMAIN=...  Amazon 2014/2018 review + metadata files
    generic:INTERACTIONS[,ITEMS]             CSV or JSON lines

Entities: the synthetic world brings its own; otherwise the configured linker
(`--linker`: MEKB_LINKER_MODE over the alias table) or, by default, only the domain
entities (brand 0.5, category 0.3, product 0.1) which need no alias table.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.base import Dataset, DatasetError, link_items

DEFAULT_SCENARIOS = {"synthetic": ("books", "movies"), "ml100k": ("drama", "action")}


def load_dataset(spec: str, *, linker: object | None = None) -> Dataset:
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from trainer.data.synthetic import KG_MODES, WorldConfig, generate_world

        seed, _, mode = arg.partition(":")
        if not seed.isdigit() and not mode:  # synthetic:kg = seed 0 with a graph
            seed, mode = "0", seed
        if mode and mode not in KG_MODES:
            raise DatasetError(f"synthetic knowledge graph {mode!r}: one of {KG_MODES}")
        return generate_world(WorldConfig(seed=int(seed or 0), kg=mode or "none"))
    if kind == "ml100k":
        from trainer.data.atomic import load_ml100k

        if arg not in ("", "genres3"):
            raise DatasetError(f"ml100k spec {spec!r}: ml100k or ml100k:genres3")
        data = load_ml100k(genres=3 if arg else 2)
    elif kind == "atomic":
        from trainer.data.atomic import load_atomic

        directory, _, name = arg.partition(":")
        data = load_atomic(Path(directory), name or None)
    elif kind == "amazon":
        from trainer.data.amazon import load_amazon

        domains = []
        for part in filter(None, arg.split(";")):
            domain, _, files = part.partition("=")
            reviews, _, meta = files.partition(",")
            if not domain or not reviews:
                raise DatasetError(f"bad amazon spec {part!r}: DOMAIN=REVIEWS[,META]")
            domains.append((domain, Path(reviews), Path(meta) if meta else None))
        data = load_amazon(domains)
    elif kind == "generic":
        from trainer.data.generic import load_generic

        inter, _, items = arg.partition(",")
        data = load_generic(Path(inter), Path(items) if items else None)
    else:
        raise DatasetError(
            f"unknown dataset {spec!r}: synthetic[:SEED][:kg], ml100k[:genres3], "
            "atomic:DIR[:NAME], amazon:DOMAIN=REVIEWS[,META];..., generic:INTERACTIONS[,ITEMS]"
        )
    return link_items(data, linker)  # type: ignore[arg-type]


def default_scenario(spec: str) -> tuple[str, str] | None:
    return DEFAULT_SCENARIOS.get(spec.partition(":")[0])
