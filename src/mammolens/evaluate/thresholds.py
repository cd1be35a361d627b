"""Choosing a binary operating threshold from validation predictions (never from test data).

``fbeta`` maximises F-beta (beta = 2 weighs a missed cancer four times a false alarm, the seed
projects' choice); ``sensitivity`` takes the threshold that reaches a target sensitivity with
the best specificity. A sample is called positive when p(class 1) >= threshold.

Every threshold between the chosen validation score and the next lower one makes the same
validation decisions; the middle of that interval is returned, not its top edge, which a film
scored exactly there (a saturated 1.0, float rounding) would sit on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mammolens.evaluate.metrics import as_proba
from mammolens.utils.errors import ConfigError, DataError
from mammolens.utils.registry import Registry

METHODS: Registry[Any] = Registry("threshold method")


def _binary_inputs(y_val: Any, p_val: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_val, dtype=np.int64)
    proba = as_proba(p_val)
    if proba.shape[1] != 2:
        raise ConfigError(f"an operating threshold is for binary tasks; these predictions have {proba.shape[1]} classes")
    if len(y) != len(proba):
        raise DataError(f"{len(y)} labels for {len(proba)} predictions")
    if not ((y == 1).any() and (y == 0).any()):
        raise DataError("choosing a threshold needs validation samples of both classes")
    return y, proba[:, 1]


@METHODS.register("fbeta")
def _max_fbeta(y: np.ndarray, p: np.ndarray, beta: float, target_sensitivity: float | None) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    b2 = beta * beta
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(precision + recall > 0, (1 + b2) * precision * recall / (b2 * precision + recall), 0.0)
    best = np.flatnonzero(f == f.max())
    return _middle(p, float(thresholds[best[-1]]))  # ties: the highest threshold, i.e. the fewest false alarms


@METHODS.register("sensitivity")
def _target_sensitivity(y: np.ndarray, p: np.ndarray, beta: float, target_sensitivity: float | None) -> float:
    from sklearn.metrics import roc_curve

    if target_sensitivity is None or not 0.0 < target_sensitivity <= 1.0:
        raise ConfigError(f"method 'sensitivity' needs target_sensitivity in (0, 1], got {target_sensitivity}")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    reach = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
    best = reach[fpr[reach] == fpr[reach].min()]
    return _middle(p, float(min(thresholds[best[0]], 1.0)))  # the highest such threshold; roc_curve's first is +inf


def _middle(p: np.ndarray, edge: float) -> float:
    """The middle of the thresholds that decide like ``edge`` on scores ``p``: (next lower score, edge]."""
    below = p[p < edge]
    return float((edge + (below.max() if len(below) else 0.0)) / 2)


def choose_threshold(
    y_val: Any, p_val: Any, method: str = "fbeta", beta: float = 2.0, target_sensitivity: float | None = None
) -> float:
    """The operating threshold in [0, 1] chosen on validation labels ``y_val`` and probabilities ``p_val``.

    ``p_val`` is p(class 1) (1-D) or (N, 2) probabilities.
    """
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    y, p = _binary_inputs(y_val, p_val)
    return METHODS.get(method)(y, p, beta, target_sensitivity)


class OperatingPoint(NamedTuple):
    """How a bundle reads its model's output, in the order it applies them: temperature, then threshold.
    One named pair everywhere, so no caller can swap the two."""

    temperature: float
    threshold: float


def operating_point(
    y_val: Any, proba_val: Any, method: str = "fbeta", beta: float = 2.0, target_sensitivity: float | None = None
) -> OperatingPoint:
    """The temperature and threshold from validation predictions made at temperature 1.

    The temperature is fitted first (``calibrate_temperature``: T = 1 where the fit failed) and the
    threshold chosen on the *scaled* probabilities, since a bundle applies its temperature before
    its threshold. Multi-class tasks decide by argmax, so
    their threshold is 0.5 (unused).
    """
    from mammolens.evaluate.calibration import apply_temperature, calibrate_temperature

    temperature = calibrate_temperature(proba_val, y_val).temperature  # T = 1 where the fit failed
    proba = apply_temperature(proba_val, temperature)
    if proba.shape[1] != 2:
        return OperatingPoint(temperature, 0.5)
    return OperatingPoint(temperature, choose_threshold(y_val, proba, method, beta=beta, target_sensitivity=target_sensitivity))


def threshold_band(y_val: Any, p_val: Any, groups: Any, method: str = "fbeta", beta: float = 2.0,
                   target_sensitivity: float | None = None, *, n_boot: int = 200, seed: int = 0,
                   level: float = 0.9) -> list[float] | None:  # fmt: skip
    """Where the threshold could as well have been: the central ``level`` interval of the thresholds
    chosen again on patient-grouped bootstrap resamples of the validation part. A probability inside
    it sits where the validation data cannot say which side it belongs to. None: too few patient
    groups, or too few resamples holding both classes, for the interval to mean anything."""
    from mammolens.evaluate.bootstrap import MIN_DEFINED, MIN_GROUPS, group_draws

    y, p = _binary_inputs(y_val, p_val)
    if len(np.unique(np.asarray(groups).astype(str))) < MIN_GROUPS:
        return None
    chosen = [METHODS.get(method)(y[rows], p[rows], beta, target_sensitivity)
              for rows in group_draws(groups, n_boot, seed) if 0 < y[rows].sum() < len(rows)]  # fmt: skip
    if len(chosen) < MIN_DEFINED * n_boot:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(chosen, [tail, 100 - tail])
    return [float(np.floor(low * 1e6) / 1e6), float(np.ceil(high * 1e6) / 1e6)]  # 6 decimals, rounded outwards
