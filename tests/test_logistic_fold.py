"""The logistic regressions folded into Linear layers (patch head, lesion head) predict what sklearn does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mammolens.engine.patch_trainer import _fit_linear
from mammolens.train.linear_head import standardisation


@pytest.mark.parametrize("present", [[0, 1], [0, 1, 2]])
def test_patch_head_is_sklearns_regression_and_an_absent_class_stays_near_zero(present: list[int]) -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(present, 120)
    x = rng.normal(size=(120, 5)) * [1, 10, 0.1, 3, 1] + y[:, None] * [1.0, 5, 0.2, 0, 0] + [0, 0, 0, 0, 7]
    x[:, 3] = 2.5  # a constant column
    layer = torch.nn.Linear(5, 4).double()
    _fit_linear(layer, x, y, 4, c=0.5)
    with torch.no_grad():
        got = torch.softmax(layer(torch.from_numpy(x)), 1).numpy()
    mean, scale = standardisation(x)
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit((x - mean) / scale, y)
    np.testing.assert_allclose(got[:, present], ref.predict_proba((x - mean) / scale), atol=1e-6)
    assert got[:, 3].max() < 1e-9  # class 3 had no training patch
    assert not np.allclose(got[:, 0], got[:, 0].mean())  # the features moved the scores: the test can fail
