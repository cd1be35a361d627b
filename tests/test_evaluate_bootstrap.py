"""The bootstrap resamples patient groups: all images of a drawn woman come together."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mammolens.evaluate.bootstrap import bootstrap_cis, fast_auc, group_draws, roc_band
from mammolens.evaluate.summary import evaluate_predictions


def _data(n_groups=30, per_group=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:02d}" for i in range(n_groups)], per_group)
    y = np.repeat(rng.integers(0, 2, n_groups), per_group)
    p1 = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    return y, np.stack([1 - p1, p1], 1), groups


def test_every_draw_takes_whole_groups():
    y, proba, groups = _data()
    for idx in group_draws(groups, n_boot=200, seed=1):
        counts = Counter(idx.tolist())
        assert len(idx) == len(groups)  # 30 groups of 3 drawn
        for g in np.unique(groups[idx]):
            rows = np.flatnonzero(groups == g)
            assert len({counts[r] for r in rows}) == 1  # every image of a drawn woman, equally often
            assert all(counts[r] >= 1 for r in rows)


def test_duplicating_every_image_of_every_woman_changes_nothing():
    """Group draws do not depend on how many images a woman has; an image-level bootstrap would narrow."""
    y, proba, groups = _data()
    ci = bootstrap_cis({"auc": fast_auc}, y, proba, groups, n_boot=300, seed=2)["auc"]
    twice = np.r_[np.arange(len(y)), np.arange(len(y))]
    ci2 = bootstrap_cis({"auc": fast_auc}, y[twice], proba[twice], groups[twice], n_boot=300, seed=2)["auc"]
    assert ci["low"] is not None
    assert (ci2["value"], ci2["low"], ci2["high"]) == pytest.approx((ci["value"], ci["low"], ci["high"]))
    # The same rows with every image its own "group" give a narrower, overconfident interval.
    naive = bootstrap_cis({"auc": fast_auc}, y[twice], proba[twice], np.arange(len(twice)), n_boot=300, seed=2)["auc"]
    assert naive["high"] - naive["low"] < 0.8 * (ci["high"] - ci["low"])


def test_ci_is_seeded_and_brackets_the_value():
    y, proba, groups = _data(seed=5)
    a = bootstrap_cis({"auc": fast_auc}, y, proba, groups, n_boot=200, seed=7)["auc"]
    b = bootstrap_cis({"auc": fast_auc}, y, proba, groups, n_boot=200, seed=7)["auc"]
    assert a == b and a["low"] <= a["value"] <= a["high"]
    assert a["defined_resamples"] == 200 and a["n_groups"] == 30


def test_two_women_give_an_undefined_ci_not_an_invented_one():
    y = np.array([0, 0, 0, 0, 1, 1, 0, 0])
    p1 = np.linspace(0.1, 0.9, 8)
    groups = ["A"] * 4 + ["B"] * 4
    metrics = evaluate_predictions(y, p1, groups, ["benign", "malignant"], 0.5, n_boot=200)
    assert metrics["auc"]["value"] is not None
    assert metrics["auc"]["low"] is None and "2 patient group" in metrics["auc"]["reason"]
    assert metrics["roc_band"] is None


def test_mostly_single_class_resamples_are_undefined():
    # 3 classes, 20 women, classes 1 and 2 one woman each: a resample holds both with probability
    # about (1 - 1/e)^2 = 0.4, so the macro AUC is undefined in most resamples and so is its CI.
    groups = np.array([f"p{i}" for i in range(20)])
    y = np.zeros(20, dtype=int)
    y[0], y[1] = 1, 2
    proba = np.random.default_rng(0).dirichlet(np.ones(3), 20)
    ci = bootstrap_cis({"auc": fast_auc}, y, proba, groups, n_boot=400, seed=0)["auc"]
    assert ci["low"] is None and "resamples" in ci["reason"]
    assert ci["defined_resamples"] < 200


def test_roc_band_contains_the_curve():
    from sklearn.metrics import roc_curve

    y, proba, groups = _data(n_groups=60)
    band = roc_band(y, proba[:, 1], groups, n_boot=300, seed=0)
    fpr, tpr, _ = roc_curve(y, proba[:, 1])
    curve = np.interp(band["fpr"], fpr, tpr)
    inside = (np.asarray(band["tpr_low"]) <= curve + 1e-9) & (curve <= np.asarray(band["tpr_high"]) + 1e-9)
    assert inside.mean() > 0.95


def test_an_undefined_within_group_ci_keeps_its_reason():
    from mammolens.evaluate.bootstrap import within_group_auc_ci

    y, p1 = np.array([0, 1] * 3), np.array([0.2, 0.7, 0.4, 0.3, 0.1, 0.9])
    ci = within_group_auc_ci(y, p1, ["a", "a", "b", "b", "c", "c"], n_boot=50)
    assert ci["low"] is None and ci["reason"] == "only 3 patient group(s); a bootstrap needs at least 5"
