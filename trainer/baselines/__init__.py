"""Methods in the evaluation harness (trainer/evaluate.py `Scorer`): MeKB-Rec and its
w/o-PLM ablation, popularity, a target-only YoutubeDNN-style two-tower, EMCDR, CMF.

The functions below are the registry's factories (trainer/evaluate.py `METHODS`):
`(MethodOptions, **search-space keywords) -> Scorer`.
"""

from __future__ import annotations

from typing import Any

from trainer.evaluate import MethodOptions, Scorer


def popularity(options: MethodOptions, **params: Any) -> Scorer:
    from trainer.baselines.popularity import Popularity

    return Popularity(**params)


def youtubednn(options: MethodOptions, **params: Any) -> Scorer:
    from trainer.baselines.youtubednn import YoutubeDNN

    return YoutubeDNN(**({"dim": options.id_dim, "epochs": options.id_epochs} | params))


def emcdr(options: MethodOptions, **params: Any) -> Scorer:
    from trainer.baselines.mf import EMCDR

    return EMCDR(**({"dim": options.id_dim, "epochs": options.id_epochs} | params))


def cmf(options: MethodOptions, **params: Any) -> Scorer:
    from trainer.baselines.mf import CMF

    return CMF(**({"dim": options.id_dim, "epochs": options.id_epochs} | params))


def _embedme(options: MethodOptions, pretrained: bool, params: dict[str, Any]) -> Scorer:
    from trainer.baselines.embedme import EmbedMeScorer
    from trainer.model import EmbedMeConfig
    from trainer.offline import TrainConfig

    training = TrainConfig(
        epochs=options.epochs, batch_users=options.batch_users, progress=options.progress,
        # w/o PLM trains every layer: a random encoder has nothing worth freezing
        freeze_layers=options.freeze_layers if pretrained else 0)
    return EmbedMeScorer(pretrained=pretrained, model=EmbedMeConfig(max_tokens=options.max_tokens),
                         training=training, **params)


def noplm(options: MethodOptions, **params: Any) -> Scorer:
    return _embedme(options, False, params)


def mekb(options: MethodOptions, **params: Any) -> Scorer:
    return _embedme(options, True, params)
