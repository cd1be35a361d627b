"""The feature fast path of the siamese bilateral model: each film's features once, pairs from them.

A frozen shared film model gives a film the same features whether it is read as the film or as
someone's partner, so the pair's features ``[f(film), f(partner), paired]`` (what
``BilateralModel.forward_features`` returns) are assembled from one pass per film. The film
features are cached under the film model's own key: a single-film run of the same film model
(same config and weights) has already computed them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mammolens.data.pairs import PairedLoader
from mammolens.models.base import MammoModel
from mammolens.train.datamodule import ArrayDataModule
from mammolens.utils.errors import ConfigError

FilmFeatures = Callable[[MammoModel, ArrayDataModule, str], np.ndarray]


class _Mirrored:
    """A film loader that flips every film left-right (partners, when the pipeline does not orient)."""

    def __init__(self, load: Callable[[str], np.ndarray]) -> None:
        self.load = load

    def __call__(self, sample_id: str) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(self.load(sample_id))[:, ::-1])


def paired_part_features(model: MammoModel, datamodule: ArrayDataModule, part: str,
                         film_features: FilmFeatures) -> np.ndarray:
    """(N, 2D + 1) pair features of ``part``; ``film_features(film_model, datamodule, part)`` is the
    caching feature extractor (``features.part_features``) applied to a single-film datamodule."""
    loader = datamodule.reader.load
    if not isinstance(loader, PairedLoader):
        raise ConfigError("model 'bilateral' reads a film with its partner: set data.pairs.enabled: true")
    ids = [datamodule.sample_ids[r] for r in datamodule.rows(part)]
    partners = [loader.partner[s] for s in ids]
    own = _films(model, datamodule, loader.film_load, sorted(set(ids) | set(partners)), loader, film_features, "")
    flipped = own
    if loader.mirror:
        others = sorted({p for s, p in zip(ids, partners) if p != s})
        flipped = _films(model, datamodule, _Mirrored(loader.film_load), others, loader, film_features, "-mirrored")
    a = np.stack([own[s] for s in ids])
    b = np.stack([own[s] if p == s else flipped[p] for s, p in zip(ids, partners)])
    paired = np.array([[float(p != s)] for s, p in zip(ids, partners)], dtype=np.float32)
    return np.concatenate([a, b, paired], axis=1).astype(np.float32, copy=False)


def _films(model: MammoModel, datamodule: ArrayDataModule, load: Callable[[str], np.ndarray], films: list[str],
           loader: PairedLoader, film_features: FilmFeatures, suffix: str) -> dict[str, np.ndarray]:
    if not films:
        return {}
    keys = None if loader.film_keys is None else [loader.film_keys[f] + suffix for f in films]
    single = ArrayDataModule(
        load, films, np.zeros(len(films), dtype=np.int64), {"train": list(range(len(films)))}, datamodule.batch_size,
        num_classes=datamodule.num_classes, normalisation=datamodule.normalisation, sample_keys=keys,
    )
    features = film_features(model.film_model, single, "train")
    return dict(zip(films, features))
