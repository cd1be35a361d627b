"""The Lightning trainer: preprocessing cache -> registry model -> ``train.fit`` -> bundle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammolens.bundle import Bundle, save_bundle
from mammolens.data.manifest import Manifest
from mammolens.data.pairs import PairedLoader, Pairs, find_partners, has_orient
from mammolens.data.tasks import Task
from mammolens.engine.config import ExperimentConfig, preprocess_config, train_config
from mammolens.engine.trainers import (
    TRAINERS,
    TrainedParts,
    choose_bundle_aggregator,
    choose_operating_point,
    part_metrics,
    record_operating_point,
)
from mammolens.models import create_model
from mammolens.preprocess import Pipeline, PreprocessCache
from mammolens.train import ArrayDataModule, fit, num_outputs
from mammolens.train.features import part_features
from mammolens.train.fitting import feature_device
from mammolens.utils.configuration import to_dict
from mammolens.utils.errors import ConfigError
from mammolens.utils.provenance import json_hash


@TRAINERS.register("lightning")
def train_lightning_parts(cfg: ExperimentConfig, manifest: Manifest, labels: np.ndarray, task: Task,
                   parts: dict[str, np.ndarray], out_dir: Path, *, resume: bool = False, progress: bool = True,
                   provenance: dict[str, Any] | None = None) -> TrainedParts:
    """Preprocess, train on ``parts["train"]`` (early stopping on ``parts["val"]``), score every
    held-out part through the bundle, and save the bundle in ``out_dir/bundle``."""
    pre_cfg, train_cfg = preprocess_config(cfg), train_config(cfg)
    pairs = find_pairs(cfg, manifest, task) if cfg.data.pairs.enabled else None  # before any work
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", pre_cfg)
    build = cache.build(manifest, workers=cfg.workers, progress=progress)

    sample_ids = manifest.df["sample_id"].tolist()
    load, sample_keys, data_key = cache.load, cache.sample_keys(sample_ids), cache.content_key(sample_ids)
    if pairs is not None:  # each film with its partner as a second channel (data/pairs.py)
        load = PairedLoader(cache.load, pairs.as_dict(), film_keys=dict(zip(sample_ids, sample_keys)),
                            mirror=not has_orient(pre_cfg.steps))
        sample_keys = load.keys(sample_ids)
        data_key = json_hash(sample_keys)
    dm = ArrayDataModule.from_config(
        load, sample_ids, labels, {k: v.tolist() for k, v in parts.items()}, train_cfg,
        num_classes=len(task.classes), data_key=data_key, sample_keys=sample_keys,
    )
    torch.manual_seed(train_cfg.seed)  # initial weights are part of what a seed reproduces
    model = create_model(cfg.model.name, num_outputs(len(task.classes), train_cfg.loss),
                         pretrained=cfg.model.pretrained, in_chans=dm.in_chans, **cfg.model.options)
    descriptors, names = _descriptors(cache, sample_ids)
    feature_cache = Path(cfg.cache_dir) / "features"
    result = fit(model, dm, train_cfg, out_dir / "training", resume=resume, feature_cache_dir=feature_cache,
                 descriptors=descriptors, descriptor_names=names, groups=manifest.df["group"].tolist())
    bundle = Bundle(
        path=out_dir / "bundle", model=result.model, classes=list(task.classes), task=task.name,
        preprocess=to_dict(pre_cfg), normalisation=result.normalisation, threshold=0.5, temperature=1.0,
        metrics={}, config=to_dict(cfg),
        provenance={**(provenance or {}), "preprocess_hash": Pipeline(pre_cfg).config_hash(),
                    "pretrained_from": dict(getattr(model, "pretrained_from", {}) or {})},
        tta=train_cfg.tta, descriptor_head=result.descriptor_head,
    )
    # Temperature and threshold from the validation part only; then every held-out part is
    # scored once, through the same Bundle code path that inference uses. With the feature fast
    # path (and no test-time augmentation or descriptors, which need the images), that is the
    # bundle's head on the frozen features cached once per film, which is what the images give
    # (tests/test_bilateral_experiment.py compares the two).
    if train_cfg.feature_fast_path and bundle.tta == 1 and bundle.descriptor_head is None:
        features = {part: part_features(result.model, dm, part, device=feature_device(train_cfg),
                                        cache_dir=feature_cache, progress=progress)
                    for part, idx in parts.items() if part != "train" and len(idx)}

        def predict(part: str) -> np.ndarray:
            return bundle.predict_proba_features(features[part])
    else:
        def predict(part: str) -> np.ndarray:
            return _predict(bundle, [sample_ids[i] for i in parts[part]], load, cache)
    y_val, proba_val = labels[parts["val"]], predict("val")
    bundle.temperature, bundle.threshold = choose_operating_point(cfg.operating_point, y_val, proba_val)
    probas = {part: predict(part) for part, idx in parts.items() if part != "train" and len(idx)}
    groups = manifest.df["group"].to_numpy()
    bundle.metrics = {part: part_metrics(bundle, labels[parts[part]], proba, groups[parts[part]])
                      for part, proba in probas.items()}  # fmt: skip
    record_operating_point(bundle, cfg.operating_point, y_val, proba_val, groups[parts["val"]], cfg.data.split.seed)
    bundle.aggregator = choose_bundle_aggregator(cfg, manifest, labels, task, parts["val"], probas.get("val"))
    save_bundle(bundle.path, bundle.model, classes=bundle.classes, task=bundle.task, preprocess=bundle.preprocess,
                normalisation=bundle.normalisation, threshold=bundle.threshold, temperature=bundle.temperature,
                metrics=bundle.metrics, provenance=bundle.provenance, config=bundle.config, tta=bundle.tta,
                descriptor_head=bundle.descriptor_head, aggregator=bundle.aggregator)
    return TrainedParts(bundle=bundle, fit=result, build=build, metrics=bundle.metrics, probas=probas)


def find_pairs(cfg: ExperimentConfig, manifest: Manifest, task: Task) -> Pairs:
    """Each film's partner (the same woman's other film); film tasks only."""
    if task.unit != "film":
        raise ConfigError(f"data.pairs: pairs are films of one woman; task {task.name} is at {task.unit} level")
    return find_partners(manifest, fallback=cfg.data.pairs.fallback)


def _descriptors(cache: PreprocessCache, sample_ids: list[str]) -> tuple[np.ndarray | None, list[str]]:
    """The (N, K) lesion descriptors the pipeline recorded and their names; (None, []) when it records none."""
    names = cache.descriptor_names(sample_ids[0])
    if not names:
        return None, []
    return np.stack([cache.load_descriptors(s) for s in sample_ids]), names


def _predict(bundle: Bundle, sample_ids: list[str], load: Callable[[str], np.ndarray], cache: PreprocessCache,
             batch: int = 32) -> np.ndarray:
    def chunk(ids: list[str]) -> np.ndarray:
        extra = np.stack([cache.load_descriptors(s) for s in ids]) if bundle.descriptor_head else None
        return bundle.predict_proba(np.stack([load(s) for s in ids]), descriptors=extra)

    return np.concatenate([chunk(sample_ids[i:i + batch]) for i in range(0, len(sample_ids), batch)])
