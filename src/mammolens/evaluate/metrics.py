"""Metrics of predicted probabilities; scikit-learn computes every one it has."""

from __future__ import annotations

import numpy as np


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """ROC AUC: binary on ``proba[:, 1]``; else scikit-learn's macro one-vs-rest over every class.

    None when undefined (a class of the task has no sample here): a number over the classes that
    happen to be present would not be the same metric.
    """
    from sklearn.metrics import roc_auc_score

    y, proba = np.asarray(y), np.asarray(proba)
    n_classes = proba.shape[1]
    if len(np.unique(y)) < (2 if n_classes == 2 else n_classes):
        return None
    if n_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))))
