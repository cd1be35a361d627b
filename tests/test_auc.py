"""One ROC AUC for training logs, run summaries and evaluation: scikit-learn's."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mammolens.evaluate.metrics import roc_auc


def test_binary_and_multiclass_are_scikit_learns():
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    proba = rng.dirichlet(np.ones(3), size=30)
    assert roc_auc(y, proba) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", labels=[0, 1, 2]))
    yb = np.arange(10) % 2
    pb = np.c_[1 - np.linspace(0, 1, 10), np.linspace(0, 1, 10)]
    assert roc_auc(yb, pb) == pytest.approx(roc_auc_score(yb, pb[:, 1]))


def test_a_class_absent_from_the_labels_leaves_the_auc_undefined():
    """The old training-log AUC averaged over the classes present (0.611 where scikit-learn's
    one-vs-rest over every label is undefined): one definition, and None rather than a number."""
    y = np.array([0, 0, 1, 1, 0, 1])
    proba = np.full((6, 3), 1 / 3)
    proba[:, 1] += np.array([-0.1, -0.2, 0.2, 0.1, 0.0, 0.15])
    proba[:, 2] -= proba[:, 1] - 1 / 3
    assert roc_auc(y, proba) is None
    assert roc_auc(np.zeros(4, int), np.full((4, 2), 0.5)) is None
