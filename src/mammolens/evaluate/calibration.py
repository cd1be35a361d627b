"""Calibration: temperature scaling fitted on validation predictions, Brier score, ECE, reliability data.

Temperature scaling (Guo et al. 2017) divides the logits by T. Probabilities are softmax(logits),
so log p equals the logits up to a per-sample constant and softmax(log p / T) is the scaled
output: T can be fitted from, and applied to, stored probabilities alone.

A fit that ends on a bound of ``T_BOUNDS`` has failed: it found no minimum. A model that ranks the
validation classes no better than chance drives T up until every probability is 1/C, which erases
the ranking a reader sees (0.504 against a 0.494 threshold). ``calibrate_temperature`` ships T = 1
then and says why.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mammolens.evaluate.metrics import as_proba, defined
from mammolens.utils.errors import DataError

_EPS = 1e-12
T_BOUNDS = (0.05, 20.0)
BOUND_RTOL = 1e-3  # a fitted T within this relative distance of a bound ended on it


class TemperatureFit(NamedTuple):
    """The temperature a bundle applies, what the fit ended on, and why they differ (None: they do not)."""

    temperature: float
    fitted: float
    failure: str | None = None

    def record(self) -> dict[str, Any]:
        """What a run summary and a bundle card say about the fit."""
        return {"applied": self.temperature, "fitted": self.fitted, "bounds": list(T_BOUNDS), "failure": self.failure}


def apply_temperature(proba: Any, temperature: float) -> np.ndarray:
    """softmax(log p / T), row-wise."""
    z = np.log(np.clip(as_proba(proba), _EPS, 1.0)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(proba_val: Any, y_val: Any) -> float:
    """The T in ``T_BOUNDS`` minimising the validation negative log-likelihood of softmax(log p / T)."""
    from scipy.optimize import minimize_scalar

    proba, y = as_proba(proba_val), np.asarray(y_val, dtype=np.int64)
    if len(y) != len(proba) or len(y) == 0:
        raise DataError(f"temperature scaling needs one label per prediction, got {len(y)} for {len(proba)}")
    logp = np.log(np.clip(proba, _EPS, 1.0))
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, y]))

    res = minimize_scalar(nll, bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def calibrate_temperature(proba_val: Any, y_val: Any) -> TemperatureFit:
    """``fit_temperature``, refused (T = 1, with the reason) where the fit ended on a bound of ``T_BOUNDS``."""
    fitted = fit_temperature(proba_val, y_val)
    low, high = T_BOUNDS
    if abs(fitted - low) <= BOUND_RTOL * low or abs(fitted - high) <= BOUND_RTOL * high:
        side = "upper" if fitted > 1 else "lower"
        why = ("the model ranks the validation classes no better than chance, so the fit flattens every "
               "probability towards 1/C" if side == "upper" else
               "the validation outputs ask for a sharper scaling than the bounds allow")
        return TemperatureFit(1.0, fitted, f"temperature fit failed: it ended on its {side} bound "
                                           f"(T = {fitted:.4g}, bounds {low:g}..{high:g}); {why}; T = 1 applied")  # fmt: skip
    return TemperatureFit(fitted, fitted)


def brier_score(y: Any, proba: Any) -> float | None:
    """scikit-learn's Brier score: binary on p(class 1); multi-class summed over classes."""
    from sklearn.metrics import brier_score_loss

    y, proba = np.asarray(y), as_proba(proba)
    if len(y) == 0:
        return None
    if proba.shape[1] == 2:
        return defined(brier_score_loss(y, proba[:, 1], pos_label=1))
    return defined(brier_score_loss(y, proba, labels=list(range(proba.shape[1]))))


def reliability(y: Any, proba: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram data on ``n_bins`` equal-width bins, and the expected calibration error.

    Binary: p(class 1) against the observed fraction of positives. Multi-class: the top-label
    confidence against the accuracy. ECE = sum over bins of (n_bin / N) * |observed - mean predicted|.
    """
    y, proba = np.asarray(y, dtype=np.int64), as_proba(proba)
    if proba.shape[1] == 2:
        score, hit, kind = proba[:, 1], (y == 1).astype(float), "positive fraction vs p(positive)"
    else:
        score, hit, kind = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(float), "accuracy vs confidence"
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        n = int(inside.sum())
        mean_p = float(score[inside].mean()) if n else None
        observed = float(hit[inside].mean()) if n else None
        if n:
            ece += n / len(y) * abs(observed - mean_p)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n,
                     "mean_predicted": mean_p, "observed": observed})
    return {"kind": kind, "n_bins": n_bins, "bins": bins, "ece": float(ece) if len(y) else None}


def expected_calibration_error(y: Any, proba: Any, n_bins: int = 10) -> float | None:
    return reliability(y, proba, n_bins)["ece"]
