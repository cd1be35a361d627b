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
from mammolens.data.manifest import Manifest
from mammolens.data.tasks import Task
from mammolens.engine.config import ExperimentConfig, OperatingPointConfig
from mammolens.evaluate.metrics import roc_auc
from mammolens.evaluate.thresholds import choose_threshold, operating_point
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
    through the bundle, and save the bundle in ``out_dir/bundle``."""
    name = "patch-classifier" if cfg.model.name == "patch-classifier" else "lightning"
    return TRAINERS.get(name)(cfg, manifest, labels, task, parts, out_dir, resume=resume, progress=progress,
                              provenance=provenance)


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


def part_metrics(bundle: Bundle, y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
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
