"""Dataset specs for the CLI: `--dataset NAME[:ARGS]` → a linked `Dataset`.

    synthetic[:SEED]                         the synthetic world (trainer/data/synthetic.py)
    ml100k                                   MovieLens-100k from recbole, action/drama
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
        from trainer.data.synthetic import WorldConfig, generate_world

        return generate_world(WorldConfig(seed=int(arg or 0)))
    if kind == "ml100k":
        from trainer.data.atomic import load_ml100k

        data = load_ml100k()
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
            f"unknown dataset {spec!r}: synthetic[:SEED], ml100k, atomic:DIR[:NAME], "
            "amazon:DOMAIN=REVIEWS[,META];..., generic:INTERACTIONS[,ITEMS]"
        )
    return link_items(data, linker)  # type: ignore[arg-type]


def default_scenario(spec: str) -> tuple[str, str] | None:
    return DEFAULT_SCENARIOS.get(spec.partition(":")[0])
