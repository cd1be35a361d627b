"""Trainers: what turns a config and an assignment of samples to parts into a bundle.

``train_on_parts`` picks one by the config's model (the patch classifier has its own; every other
model trains through Lightning). Each trainer chooses temperature and threshold on the validation
part only, through ``choose_operating_point``, and scores the held-out parts through its bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mammolens.bundle import Bundle
from mammolens.data.fingerprints import FITTED_ON, HELD_OUT, fitted_on_record
from mammolens.data.manifest import Manifest
from mammolens.data.tasks import Task
from mammolens.engine.config import ExperimentConfig, OperatingPointConfig
from mammolens.evaluate.bootstrap import bootstrap_cis, fast_auc
from mammolens.evaluate.calibration import apply_temperature, calibrate_temperature
from mammolens.evaluate.metrics import roc_auc
from mammolens.evaluate.thresholds import OperatingPoint, choose_threshold, operating_point, threshold_band
from mammolens.preprocess import BuildReport
from mammolens.train import FitResult
from mammolens.utils.registry import Registry

TRAINERS: Registry[Callable[..., "TrainedParts"]] = Registry("trainer")
TRAINERS.lazy("lightning", "mammolens.engine.lightning_trainer")
TRAINERS.lazy("patch-classifier", "mammolens.engine.patch_trainer")


@dataclass
class TrainedParts:
    """A model trained on one assignment of samples to parts, saved as a bundle."""

    bundle: Bundle
    fit: FitResult
    build: BuildReport
    metrics: dict[str, dict[str, Any]]
    probas: dict[str, np.ndarray]  # held-out part -> (N, C) probabilities, in the part's row order


def train_on_parts(cfg: ExperimentConfig, manifest: Manifest, labels: np.ndarray, task: Task,
                   parts: dict[str, np.ndarray], out_dir: Path, *, resume: bool = False, progress: bool = True,
                   provenance: dict[str, Any] | None = None) -> TrainedParts:
    """Train on ``parts["train"]`` (early stopping on ``parts["val"]``), score every held-out part
    through the bundle, and save the bundle in ``out_dir/bundle``, recording which samples and women it
    was fitted on and held out (``data.fingerprints``)."""
    provenance = {**(provenance or {}), FITTED_ON: fitted_on_record(manifest, parts),
                  HELD_OUT: fitted_on_record(manifest, parts, ("test",))}
    name = "patch-classifier" if cfg.model.name == "patch-classifier" else "lightning"
    return TRAINERS.get(name)(cfg, manifest, labels, task, parts, out_dir, resume=resume, progress=progress,
                              provenance=provenance)


def choose_operating_point(op: OperatingPointConfig, y_val: np.ndarray, proba_val: np.ndarray) -> OperatingPoint:
    """The temperature and threshold fitted on validation labels and uncalibrated probabilities only.

    A validation part holding one class says nothing about either: T = 1 and 0.5 stay.
    """
    if len(np.unique(y_val)) < 2:
        return OperatingPoint(1.0, 0.5)
    if not op.temperature:
        binary = proba_val.shape[1] == 2
        return OperatingPoint(1.0, choose_threshold(y_val, proba_val, op.threshold, op.beta, op.target_sensitivity)
                              if binary else 0.5)  # fmt: skip
    return operating_point(y_val, proba_val, op.threshold, op.beta, op.target_sensitivity)


def choose_bundle_aggregator(cfg: ExperimentConfig, manifest: Manifest, labels: np.ndarray, task: Task,
                             val: np.ndarray, proba_val: np.ndarray) -> dict[str, Any] | None:
    """The bundle's views -> breast -> exam aggregator (``evaluate.exams``: ``exams.aggregate``, its fitted
    parameters and the ``exams.level`` threshold), chosen on the validation part's films only; None
    for a lesion task, whose samples are findings, not films."""
    from mammolens.evaluate.levels import choose_aggregator, exam_columns
    from mammolens.evaluate.predictions import predictions_frame

    if task.unit != "film" or not len(val):
        return None
    part = manifest.subset(val.tolist())
    table = predictions_frame(part.df["sample_id"].tolist(), part.df["group"].tolist(), labels[val], proba_val,
                              list(task.classes), exams=exam_columns(part))
    op = cfg.operating_point
    return choose_aggregator(table, list(task.classes), cfg.exams.level, cfg.exams.aggregate,
                             lambda y, p: choose_threshold(y, p, op.threshold, op.beta, op.target_sensitivity))


def record_operating_point(bundle: Bundle, op: OperatingPointConfig, y_val: np.ndarray, proba_val: np.ndarray,
                           groups_val: np.ndarray, seed: int) -> None:  # fmt: skip
    """What the bundle's card must say about its operating point, from the validation part it was chosen on
    (``proba_val`` at T = 1; ``bundle.metrics`` already set): a temperature fit that failed (provenance
    ``temperature_fit``: T = 1 was applied) and, for a binary task, the threshold's bootstrap band
    (``metrics.val.threshold_band``), inside which the service marks a result close to the threshold."""
    if len(np.unique(y_val)) < 2:
        return
    if op.temperature and (fit := calibrate_temperature(proba_val, y_val)).failure is not None:
        bundle.provenance["temperature_fit"] = fit.record()
    if "val" in bundle.metrics and proba_val.shape[1] == 2:
        bundle.metrics["val"]["threshold_band"] = threshold_band(
            y_val, apply_temperature(proba_val, bundle.temperature), groups_val, op.threshold, op.beta,
            op.target_sensitivity, seed=seed)  # fmt: skip


def part_metrics(bundle: Bundle, y: np.ndarray, proba: np.ndarray, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Threshold-free AUC plus accuracy (and, for two classes, sensitivity/specificity) at the bundle's
    threshold / argmax; None where a metric is undefined (a class absent from the part). With the
    part's patient ``groups``: ``auc_ci``, the AUC's 95 % bootstrap interval over women ([None, None]
    where too few), which the model card reads to say whether the AUC clears chance."""
    binary = proba.shape[1] == 2
    pred = (proba[:, 1] >= bundle.threshold).astype(int) if binary else proba.argmax(1)
    out: dict[str, Any] = {"auc": roc_auc(y, proba), "accuracy": float((pred == y).mean()), "n": int(len(y))}
    if groups is not None and out["auc"] is not None:
        ci = bootstrap_cis({"auc": fast_auc}, y, proba, groups)["auc"]
        out["auc_ci"] = [ci["low"], ci["high"]]
    if binary:
        pos, neg = y == 1, y == 0
        out["sensitivity"] = float((pred[pos] == 1).mean()) if pos.any() else None
        out["specificity"] = float((pred[neg] == 0).mean()) if neg.any() else None
        out["threshold"] = float(bundle.threshold)
    return out
