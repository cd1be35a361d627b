"""A small-data head for the feature fast path: standardised features -> L2 logistic regression.

With ~60 training lesions an MLP head trained by SGD is high-variance; a regularised linear model
whose strength C is chosen by patient-grouped cross-validation on the training part alone (the
validation part stays untouched for the temperature and threshold) is the classic answer. The
fitted model is folded into the MammoModel's own last Linear layer (standardisation included), so
the bundle predicts like any other; the descriptors' share, when used, goes into the bundle's
``descriptor_head`` (see Bundle.predict_proba).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mammolens.models.base import MammoModel
from mammolens.utils.errors import ConfigError


@dataclass
class LinearHeadFit:
    c: float
    scores: dict[float, float]  # C -> inner-cv score (pooled AUC for 2 classes, -log loss otherwise)
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (outputs, D) in standardised units, rows aligned with the model's logits
    intercept: np.ndarray  # (outputs,)


def _estimator(c: float, balanced: bool, seed: int):  # noqa: ANN202
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced" if balanced else None, max_iter=5000, random_state=seed)


def _inner_score(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, balanced: bool, folds: int,
                 seed: int) -> float:
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    n_classes = int(y.max()) + 1
    folds = max(2, min(folds, int(np.bincount(y).min())))
    proba = np.zeros((len(y), n_classes))
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups):
        est = _estimator(c, balanced, seed).fit(x[train], y[train])
        proba[np.ix_(test, est.classes_)] = est.predict_proba(x[test])
    if n_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return -float(log_loss(y, np.clip(proba, 1e-7, 1.0), labels=list(range(n_classes))))


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and scale of ``x``; a constant column gets scale 1 (it contributes nothing)."""
    x = np.asarray(x, dtype=np.float64)
    mean, scale = x.mean(0), x.std(0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def softmax_logits(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's binary model (one logit for the second class) as two softmax logits: softmax([0, z])
    == sigmoid(z); a multinomial model is returned as it is."""
    if coef.shape[0] == 1:
        return np.vstack([np.zeros_like(coef), coef]), np.array([0.0, float(intercept[0])])
    return coef, intercept


def fold_standardisation(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray,
                         scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias on raw features equal to ``coef @ ((x - mean) / scale) + intercept``."""
    weight = coef / scale
    return weight, intercept - weight @ mean


def fit_linear_head(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, cs: list[float], balanced: bool,
                    outputs: int, folds: int = 3, seed: int = 0) -> LinearHeadFit:
    """Standardise ``x`` (on these rows), pick C from ``cs`` by grouped inner cv, refit on all rows."""
    if len(np.unique(y)) < 2:
        raise ConfigError("train.head: logistic needs both classes in the training part")
    x = np.asarray(x, dtype=np.float64)
    mean, scale = standardisation(x)
    z = (x - mean) / scale
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    scores = {float(c): _inner_score(z, y, groups, float(c), balanced, folds, seed) for c in cs}
    best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    est = _estimator(best, balanced, seed).fit(z, y)
    coef, intercept = softmax_logits(est.coef_, est.intercept_)
    if coef.shape[0] != outputs:
        raise ConfigError(f"train.head: logistic gives {coef.shape[0]} logits; the model has {outputs}")
    return LinearHeadFit(best, scores, mean, scale, coef, intercept)


def last_linear(model: MammoModel) -> nn.Linear:
    """The head's only Linear layer (a linear-probe head, ``hidden: 0``)."""
    linears = [m for head in model.head_modules() for m in head.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise ConfigError("train.head: logistic needs a linear head: set model.options.hidden to 0")
    return linears[0]


def install_linear_head(model: MammoModel, fit: LinearHeadFit, n_features: int) -> dict[str, Any] | None:
    """Fold the first ``n_features`` columns (image features) into the model's Linear head; return the
    remaining columns (descriptors) as the bundle's descriptor head, or None when there are none."""
    linear = last_linear(model)
    if linear.in_features != n_features and n_features:
        raise ConfigError(f"the head takes {linear.in_features} features, the backbone gave {n_features}")
    w = np.zeros((fit.coef.shape[0], linear.in_features))
    b = fit.intercept.astype(np.float64).copy()
    if n_features:
        w, b = fold_standardisation(fit.coef[:, :n_features], b, fit.mean[:n_features], fit.scale[:n_features])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w).to(linear.weight))
        linear.bias.copy_(torch.from_numpy(b).to(linear.bias))
    if fit.coef.shape[1] == n_features:
        return None
    return {"mean": fit.mean[n_features:].tolist(), "scale": fit.scale[n_features:].tolist(),
            "coef": fit.coef[:, n_features:].tolist()}
