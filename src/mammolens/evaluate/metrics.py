"""Classification metrics, all through scikit-learn; undefined values are ``None``, never NaN.

One decision rule everywhere (``decide``): a binary task calls a sample positive when
p(class 1) >= threshold; a multi-class task takes the most probable class. One ROC AUC
(``roc_auc``) everywhere: binary on p(class 1), multi-class one-vs-rest macro over *every*
label, so a class absent from the data makes the macro AUC undefined rather than quietly
averaged over fewer classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def defined(value: Any) -> float | None:
    """A finite float, or None for NaN / inf / None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _quiet(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - sklearn's undefined-metric warnings become None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except ValueError:
            return None


def as_proba(proba: Any) -> np.ndarray:
    """(N, C) float64; a 1-D array is read as p(class 1) of a binary task."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1:
        proba = np.stack([1.0 - proba, proba], axis=1)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"probabilities must be shaped (N, C) with C >= 2, got {proba.shape}")
    return proba


def decide(proba: Any, threshold: float = 0.5) -> np.ndarray:
    """Predicted class index per sample (binary: p1 >= threshold; multi-class: argmax)."""
    proba = as_proba(proba)
    if proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1).astype(np.int64)


def roc_auc(y: Any, proba: Any) -> float | None:
    """ROC AUC: binary on proba[:, 1], multi-class one-vs-rest macro over every label; None when undefined."""
    y, proba = np.asarray(y), as_proba(proba)
    n_classes = proba.shape[1]
    if len(y) == 0 or len(np.unique(y)) < 2:
        return None
    if n_classes == 2:
        return defined(_quiet(skm.roc_auc_score, y, proba[:, 1]))
    if len(np.unique(y)) < n_classes:
        return None  # some class has no positive: its one-vs-rest AUC, hence the macro, is undefined
    return defined(_quiet(skm.roc_auc_score, y, proba, multi_class="ovr", average="macro",
                          labels=list(range(n_classes))))


def ovr_aucs(y: Any, proba: Any, classes: Sequence[str]) -> dict[str, float | None]:
    """One-vs-rest ROC AUC of each class (None where the class, or every other, is absent)."""
    y, proba = np.asarray(y), as_proba(proba)
    return {name: roc_auc((y == i).astype(int), proba[:, i]) for i, name in enumerate(classes)}


def pr_auc(y: Any, proba: Any) -> float | None:
    """Average precision of the positive class (binary); None without positives or negatives."""
    y, proba = np.asarray(y), as_proba(proba)
    if proba.shape[1] != 2 or not (y == 1).any() or not (y == 0).any():
        return None
    return defined(_quiet(skm.average_precision_score, y, proba[:, 1]))


def binary_at_threshold(y: Any, proba: Any, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, precision, NPV, F1, F2 and the confusion matrix at ``threshold``."""
    y = np.asarray(y, dtype=np.int64)
    pred = decide(proba, threshold)
    nan = np.nan

    def score(fn, **kw):  # noqa: ANN001, ANN003, ANN202
        return defined(_quiet(fn, y, pred, labels=[0, 1], zero_division=nan, **kw))

    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    return {
        "threshold": float(threshold),
        "accuracy": defined(skm.accuracy_score(y, pred)) if len(y) else None,
        "sensitivity": score(skm.recall_score, pos_label=1),
        "specificity": score(skm.recall_score, pos_label=0),
        "precision": score(skm.precision_score, pos_label=1),
        "npv": score(skm.precision_score, pos_label=0),
        "f1": score(skm.f1_score, pos_label=1),
        "f2": score(skm.fbeta_score, beta=2.0, pos_label=1),
        "confusion_matrix": cm.tolist(),  # rows: true [negative, positive]; columns: predicted
        "tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1]),
    }  # fmt: skip


def multiclass_table(y: Any, proba: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support, macro and weighted averages, accuracy, confusion matrix.

    Per-class values that are undefined (nothing predicted as, or no sample of, a class) are None;
    the averages count them as 0, as scikit-learn's ``classification_report`` does, so always
    answering one class scores what it deserves.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = decide(proba)
    labels = list(range(len(classes)))
    p, r, f, s = _quiet(skm.precision_recall_fscore_support, y, pred, labels=labels, zero_division=np.nan)
    per_class = {
        name: {"precision": defined(p[i]), "recall": defined(r[i]), "f1": defined(f[i]), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    averages = {}
    for average in ("macro", "weighted"):
        ap, ar, af, _ = _quiet(skm.precision_recall_fscore_support, y, pred, labels=labels, average=average,
                               zero_division=0)
        averages[average] = {"precision": defined(ap), "recall": defined(ar), "f1": defined(af)}
    return {
        "per_class": per_class,
        **averages,
        "accuracy": defined(skm.accuracy_score(y, pred)) if len(y) else None,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
    }


def macro_f1(y: Any, proba: Any) -> float | None:
    proba = as_proba(proba)
    return defined(_quiet(skm.f1_score, y, decide(proba), labels=list(range(proba.shape[1])), average="macro",
                          zero_division=0))


def linear_kappa(y: Any, proba: Any) -> float | None:
    """Cohen's kappa with linear weights over the class order (ordered classes such as breast density:
    a call one grade off costs half of one two grades off); None when undefined (one class only)."""
    proba = as_proba(proba)
    if len(np.asarray(y)) == 0:
        return None
    return defined(_quiet(skm.cohen_kappa_score, np.asarray(y), decide(proba), weights="linear",
                          labels=list(range(proba.shape[1]))))


def within_group_comparisons(y: Any, score: Any, groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per group holding both classes (a woman with one diseased and one healthy film): how often a
    positive sample outscores a negative one of the same group (ties count 1/2), and how many such
    comparisons there are. Woman-level traits (breast density, age, the scanner) cancel inside a
    group, so this asks whether the model finds the disease, not the kind of woman who has it."""
    y, score, groups = np.asarray(y), np.asarray(score, dtype=np.float64), np.asarray(groups).astype(str)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    wins, pairs = [], []
    for rows in np.split(order, np.cumsum(np.bincount(inverse))[:-1]) if len(y) else []:
        pos, neg = score[rows][y[rows] == 1], score[rows][y[rows] == 0]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            wins.append(float((diff > 0).sum() + 0.5 * (diff == 0).sum()))
            pairs.append(float(diff.size))
    return np.asarray(wins), np.asarray(pairs)


def within_group_auc(y: Any, score: Any, groups: Sequence[str]) -> float | None:
    """The AUC over positive-negative comparisons inside each group only (None: no group holds both)."""
    wins, pairs = within_group_comparisons(y, score, groups)
    return float(wins.sum() / pairs.sum()) if len(pairs) else None


def format_value(value: Any, reason: str = "not defined on these samples", digits: int = 3) -> str:
    """A metric for a person: the number, or ``undefined (why)``; never 'nan'."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    value = defined(value)
    return f"undefined ({reason})" if value is None else f"{value:.{digits}f}"
