"""One experiment, end to end: the config's task samples and split -> preprocessing cache -> model ->
Lightning training -> evaluation of the held-out parts -> bundle, in a run folder that is never
overwritten by accident and never resumed with other data or settings.

This is the only module that knows every room; each room stays ignorant of the others and speaks
through the Manifest, the Split, the PreprocessCache, the model registry and the Bundle.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammolens import atomic
from mammolens.configuration import to_dict
from mammolens.data.manifest import Manifest
from mammolens.data.pairs import PairedLoader, Pairs, find_partners, has_orient
from mammolens.data.splits import save_split
from mammolens.data.tasks import Task
from mammolens.datasets import make_or_load_split, split_parts, task_samples
from mammolens.errors import ConfigError
from mammolens.evaluate.calibration import apply_temperature, calibrate_temperature
from mammolens.evaluate.metrics import roc_auc
from mammolens.evaluate.thresholds import choose_threshold, operating_point, threshold_band
from mammolens.run_dir import RUN_RECORD, check_resume, claim_run_dir, clear_run_dir
from mammolens.experiment_config import (  # noqa: F401 - re-exported: the config is part of this API
    ExperimentConfig,
    OperatingPointConfig,
    load_config,
    preprocess_config,
    train_config,
)
from mammolens.models import create_model
from mammolens.preprocess import BuildReport, Pipeline, PreprocessCache
from mammolens.train import ArrayDataModule, Bundle, FitResult, fit, num_outputs, save_bundle
from mammolens.train.features import part_features
from mammolens.train.fitting import _feature_device

@dataclass
class TrainedParts:
    """A model trained on one assignment of samples to parts, saved as a bundle."""

    bundle: Bundle
    fit: FitResult
    build: BuildReport
    metrics: dict[str, dict[str, Any]]
    probas: dict[str, np.ndarray]  # held-out part -> (N, C) probabilities, in the part's row order


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, fresh: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one configured model; returns the summary written to ``summary.json``.

    A folder that already holds a run is continued with ``resume`` (only with the same data,
    split and settings), replaced with ``fresh``, and otherwise refused before anything is
    written or computed.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    claim_run_dir(out_dir, resume=resume, fresh=fresh)
    manifest, labels, task = task_samples(cfg, progress=progress)
    split = make_or_load_split(cfg, manifest, labels, task.name)
    record = {"config": to_dict(cfg), "manifest_hash": manifest.content_hash(), "split_hash": _json_hash(split.parts)}
    if resume:
        check_resume(out_dir, record)
    elif fresh:
        clear_run_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / RUN_RECORD, record)
    save_split(split, out_dir / "split.json")
    manifest.save(out_dir / "manifest.csv")
    parts = split_parts(cfg, split, manifest)
    provenance = {
        "manifest_hash": record["manifest_hash"],
        "split_file_hash": _file_hash(out_dir / "split.json"),
        "split": {"kind": split.kind, "seed": split.seed, "sizes": {p: int(len(v)) for p, v in parts.items()}},
        "source": cfg.data.source,
    }
    trained = train_on_parts(cfg, manifest, labels, task, parts, out_dir, resume=resume, progress=progress,
                             provenance=provenance)
    summary = {
        "name": cfg.name,
        "task": task.name,
        "unit": task.unit,
        "classes": list(task.classes),
        "model": cfg.model.name,
        "samples": {p: int(len(v)) for p, v in parts.items()},
        "class_counts": {p: np.bincount(labels[v], minlength=len(task.classes)).tolist() for p, v in parts.items()},
        "groups": int(manifest.df["group"].nunique()),
        "preprocess": trained.build.summary(),
        "notes": manifest.notes + _warnings(trained.build, task) + _fit_notes(trained.bundle),
        "best_epoch": trained.fit.best_epoch,
        "epochs_run": len(trained.fit.history),
        "stopped_early": trained.fit.stopped_early,
        "history": trained.fit.history,
        "metrics": trained.metrics,
        "temperature_fit": trained.bundle.provenance.get("temperature_fit"),
        "bundle": str(trained.bundle.path),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic.write_json(out_dir / "summary.json", summary)
    return summary


def train_on_parts(cfg: ExperimentConfig, manifest: Manifest, labels: np.ndarray, task: Task,
                   parts: dict[str, np.ndarray], out_dir: Path, *, resume: bool = False, progress: bool = True,
                   provenance: dict[str, Any] | None = None) -> TrainedParts:
    """Preprocess, train on ``parts["train"]`` (early stopping on ``parts["val"]``), score every
    held-out part through the bundle, and save the bundle in ``out_dir/bundle``."""
    if cfg.model.name == "patch-classifier":  # issue 14: patch classifier slid over the film (patches/)
        from mammolens.patches.trainer import train_patch_parts

        return train_patch_parts(cfg, manifest, labels, task, parts, out_dir, resume=resume, progress=progress,
                                 provenance=provenance)
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
        data_key = _json_hash(sample_keys)
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
        features = {part: part_features(result.model, dm, part, device=_feature_device(train_cfg),
                                        cache_dir=feature_cache, progress=progress)
                    for part, idx in parts.items() if part != "train" and len(idx)}

        def predict(part: str) -> np.ndarray:
            return bundle.predict_proba_features(features[part])
    else:
        def predict(part: str) -> np.ndarray:
            return _predict(bundle, [sample_ids[i] for i in parts[part]], load, cache)
    y_val, proba_val = labels[parts["val"]], predict("val")
    bundle.temperature, bundle.threshold = choose_operating_point(cfg.operating_point, y_val, proba_val)
    if (failure := temperature_failure(cfg.operating_point, y_val, proba_val)) is not None:
        bundle.provenance["temperature_fit"] = failure  # the bundle's card says so (deploy/spec.py)
    probas = {part: predict(part) for part, idx in parts.items() if part != "train" and len(idx)}
    bundle.metrics = {part: _part_metrics(bundle, labels[parts[part]], proba) for part, proba in probas.items()}
    if "val" in bundle.metrics and len(task.classes) == 2 and len(np.unique(y_val)) == 2:
        op = cfg.operating_point  # the threshold's own uncertainty: the service marks films inside it
        bundle.metrics["val"]["threshold_band"] = threshold_band(
            y_val, apply_temperature(proba_val, bundle.temperature), manifest.df["group"].to_numpy()[parts["val"]],
            op.threshold, op.beta, op.target_sensitivity, seed=cfg.data.split.seed)  # fmt: skip
    save_bundle(bundle.path, bundle.model, classes=bundle.classes, task=bundle.task, preprocess=bundle.preprocess,
                normalisation=bundle.normalisation, threshold=bundle.threshold, temperature=bundle.temperature,
                metrics=bundle.metrics, provenance=bundle.provenance, config=bundle.config, tta=bundle.tta,
                descriptor_head=bundle.descriptor_head)
    return TrainedParts(bundle=bundle, fit=result, build=build, metrics=bundle.metrics, probas=probas)


def find_pairs(cfg: ExperimentConfig, manifest: Manifest, task: Task) -> Pairs:
    """Each film's partner (the same woman's other film); film tasks only."""
    if task.unit != "film":
        raise ConfigError(f"data.pairs: pairs are films of one woman; task {task.name} is at {task.unit} level")
    return find_partners(manifest, fallback=cfg.data.pairs.fallback)


def choose_operating_point(op: OperatingPointConfig, y_val: np.ndarray, proba_val: np.ndarray) -> tuple[float, float]:
    """(temperature, threshold) fitted on validation labels and uncalibrated probabilities only.

    A validation part holding one class says nothing about either: T = 1 and 0.5 stay.
    """
    if len(np.unique(y_val)) < 2:
        return 1.0, 0.5
    if not op.temperature:
        binary = proba_val.shape[1] == 2
        return 1.0, choose_threshold(y_val, proba_val, op.threshold, op.beta, op.target_sensitivity) if binary else 0.5
    threshold, temperature = operating_point(y_val, proba_val, op.threshold, op.beta, op.target_sensitivity)
    return temperature, threshold


def temperature_failure(op: OperatingPointConfig, y_val: np.ndarray, proba_val: np.ndarray) -> dict[str, Any] | None:
    """The record of a temperature fit that failed (``calibrate_temperature``: T = 1 was applied), else None."""
    if not op.temperature or len(np.unique(y_val)) < 2:
        return None
    fit = calibrate_temperature(proba_val, y_val)
    return None if fit.failure is None else fit.record()


def _warnings(build: BuildReport, task: Task) -> list[str]:
    if not build.roi_missing:
        return []
    note = f"{len(build.roi_missing)} sample(s) without ROI were kept whole by crop_roi (on_missing: full)"
    if task.unit == "lesion":
        note += "; among lesion crops a whole film is a shortcut: the kind of input can predict the label"
    return [note]


def _fit_notes(bundle: Bundle) -> list[str]:
    failure = bundle.provenance.get("temperature_fit")
    return [] if failure is None else [failure["failure"]]


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


def _part_metrics(bundle: Bundle, y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Threshold-free AUC plus accuracy (and, for two classes, sensitivity/specificity) at the bundle's
    threshold / argmax; None where a metric is undefined (a class absent from the part)."""
    binary = proba.shape[1] == 2
    pred = (proba[:, 1] >= bundle.threshold).astype(int) if binary else proba.argmax(1)
    out: dict[str, Any] = {"auc": roc_auc(y, proba), "accuracy": float((pred == y).mean()), "n": int(len(y))}
    if binary:
        pos, neg = y == 1, y == 0
        out["sensitivity"] = float((pred[pos] == 1).mean()) if pos.any() else None
        out["specificity"] = float((pred[neg] == 0).mean()) if neg.any() else None
        out["threshold"] = float(bundle.threshold)
    return out


def _file_hash(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def _json_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]

