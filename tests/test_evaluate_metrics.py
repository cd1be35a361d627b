"""Every metric against scikit-learn on known inputs; undefined values are None, never NaN."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn import metrics as skm

from mammolens.evaluate import bootstrap as b
from mammolens.evaluate import metrics as m
from mammolens.evaluate.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    reliability,
)
from mammolens.evaluate.summary import evaluate_predictions, render_table
from mammolens.evaluate.thresholds import choose_threshold, operating_point
from mammolens.utils.errors import ConfigError, DataError


@pytest.fixture()
def binary():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    p1 = np.clip(0.35 * y + 0.65 * rng.random(120), 0, 1).round(2)  # rounded: ties, as real scores have
    return y, np.stack([1 - p1, p1], axis=1)


@pytest.fixture()
def multi():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 150)
    proba = rng.dirichlet(np.ones(4), 150)
    proba[np.arange(150), y] += 0.3
    return y, proba / proba.sum(1, keepdims=True)


def test_binary_metrics_match_sklearn(binary):
    y, proba = binary
    p1 = proba[:, 1]
    assert m.roc_auc(y, proba) == pytest.approx(skm.roc_auc_score(y, p1))
    assert m.pr_auc(y, proba) == pytest.approx(skm.average_precision_score(y, p1))
    for t in (0.3, 0.5, 0.71):
        pred = (p1 >= t).astype(int)
        got = m.binary_at_threshold(y, proba, t)
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
        assert got["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
        assert got["precision"] == pytest.approx(skm.precision_score(y, pred))
        assert got["npv"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
        assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
        assert got["f2"] == pytest.approx(skm.fbeta_score(y, pred, beta=2))
        assert got["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
        tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
        assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)


def test_multiclass_metrics_match_sklearn(multi):
    y, proba = multi
    classes = ["a", "b", "c", "d"]
    assert m.roc_auc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    pred = proba.argmax(1)
    table = m.multiclass_table(y, proba, classes)
    report = skm.classification_report(y, pred, output_dict=True, zero_division=0)
    for i, c in enumerate(classes):
        assert table["per_class"][c]["precision"] == pytest.approx(report[str(i)]["precision"])
        assert table["per_class"][c]["recall"] == pytest.approx(report[str(i)]["recall"])
        assert table["per_class"][c]["f1"] == pytest.approx(report[str(i)]["f1-score"])
        assert table["per_class"][c]["support"] == report[str(i)]["support"]
        assert m.ovr_aucs(y, proba, classes)[c] == pytest.approx(skm.roc_auc_score(y == i, proba[:, i]))
    for avg in ("macro", "weighted"):
        assert table[avg]["f1"] == pytest.approx(report[f"{avg} avg"]["f1-score"])
        assert table[avg]["precision"] == pytest.approx(report[f"{avg} avg"]["precision"])
    assert table["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert table["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m.macro_f1(y, proba) == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_always_one_class_scores_like_classification_report():
    """Seven classes, the model always answers the majority: undefined precisions count 0 in the macro F1."""
    y = np.array([6] * 64 + [0, 1, 2, 3, 4, 5] * 6)
    proba = np.full((len(y), 7), 0.01)
    proba[:, 6] = 0.94
    table = m.multiclass_table(y, proba, list("ABCDEFG"))
    assert table["per_class"]["A"]["precision"] is None  # nothing predicted as A
    assert table["per_class"]["A"]["recall"] == 0.0
    assert table["macro"]["f1"] == pytest.approx(skm.f1_score(y, proba.argmax(1), average="macro", zero_division=0))


def test_undefined_values_are_none_and_print_as_undefined():
    y = np.zeros(6, dtype=int)
    proba = np.stack([np.linspace(0.9, 0.4, 6), np.linspace(0.1, 0.6, 6)], 1)
    assert m.roc_auc(y, proba) is None
    assert m.pr_auc(y, proba) is None
    got = m.binary_at_threshold(y, proba, 0.5)
    assert got["sensitivity"] is None and got["specificity"] == pytest.approx(4 / 6)
    three = np.array([0, 1, 1, 0])  # class 2 absent: the macro over every label is undefined
    assert m.roc_auc(three, np.full((4, 3), 1 / 3)) is None
    assert m.format_value(None, "one class only") == "undefined (one class only)"
    assert m.format_value(float("nan")) .startswith("undefined")
    metrics = evaluate_predictions(y, proba, ["g"] * 6, ["benign", "malignant"], 0.5, n_boot=50)
    text = json.dumps(metrics)
    assert "NaN" not in text and metrics["auc"]["value"] is None
    table = render_table(metrics)
    assert not re.search(r"\bnan\b", table, re.I) and "undefined (only benign present)" in table


def test_fast_bootstrap_statistics_equal_sklearn(binary, multi):
    y, proba = binary
    assert b.fast_auc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert b.fast_average_precision(y, proba) == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    assert b.fast_sensitivity(0.5)(y, proba) == pytest.approx(skm.recall_score(y, proba[:, 1] >= 0.5))
    assert b.fast_specificity(0.5)(y, proba) == pytest.approx(skm.recall_score(y, proba[:, 1] >= 0.5, pos_label=0))
    y3, proba3 = multi
    assert b.fast_auc(y3, proba3) == pytest.approx(skm.roc_auc_score(y3, proba3, multi_class="ovr"))
    assert b.fast_macro_f1(y3, proba3) == pytest.approx(skm.f1_score(y3, proba3.argmax(1), average="macro"))


def test_choose_threshold_fbeta_and_target_sensitivity():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    # Brute force over every candidate threshold, by sklearn's fbeta_score.
    for beta in (0.5, 1.0, 2.0):
        scores = {t: skm.fbeta_score(y, p >= t, beta=beta) for t in p}
        best = max(scores.values())
        edge = max(t for t, s in scores.items() if s == best)
        # the middle of (next lower score, edge]: the thresholds that decide like the edge on validation
        assert choose_threshold(y, p, beta=beta) == pytest.approx((edge + p[p < edge].max()) / 2)
    t = choose_threshold(y, p, method="sensitivity", target_sensitivity=0.8)
    assert t == pytest.approx(0.5)  # 4 of 5 positives at the fewest false alarms: (0.4, 0.6]
    assert choose_threshold(y, p, method="sensitivity", target_sensitivity=1.0) == pytest.approx(0.325)
    with pytest.raises(DataError, match="both classes"):
        choose_threshold(np.zeros(4), p[:4])
    with pytest.raises(ConfigError, match="known: fbeta, sensitivity"):
        choose_threshold(y, p, method="youden")


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 3))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in true])
    overconfident = apply_temperature(true, 0.5)  # the model's outputs are true logits * 2
    assert fit_temperature(overconfident, y) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(true, y) == pytest.approx(1.0, rel=0.1)
    assert np.allclose(apply_temperature(overconfident, 2.0), true, atol=1e-9)


def test_brier_ece_reliability_on_known_inputs(binary, multi):
    y, proba = binary
    assert brier_score(y, proba) == pytest.approx(skm.brier_score_loss(y, proba[:, 1]))
    y3, p3 = multi
    assert brier_score(y3, p3) == pytest.approx(np.mean(((np.eye(4)[y3] - p3) ** 2).sum(1)))
    # Two bins by hand: p 0.2 (4 samples, 1 positive) and p 0.8 (4 samples, 2 positives).
    yy = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    pp = np.array([0.2] * 4 + [0.8] * 4)
    rel = reliability(yy, pp, n_bins=10)
    filled = [b for b in rel["bins"] if b["count"]]
    assert [(b["count"], b["observed"]) for b in filled] == [(4, 0.25), (4, 0.5)]
    assert expected_calibration_error(yy, pp) == pytest.approx(0.5 * 0.05 + 0.5 * 0.3)
    from sklearn.calibration import calibration_curve

    frac, mean_pred = calibration_curve(y, proba[:, 1], n_bins=10)
    mine = [(b["observed"], b["mean_predicted"]) for b in reliability(y, proba)["bins"] if b["count"]]
    assert np.allclose([o for o, _ in mine], frac) and np.allclose([p for _, p in mine], mean_pred)


def test_operating_point_scales_first_then_chooses_the_threshold(binary):
    y, proba = binary
    sharp = apply_temperature(proba, 0.3)  # overconfident validation outputs
    point = operating_point(y, sharp)
    temperature, threshold = point.temperature, point.threshold
    assert tuple(point) == (temperature, threshold)  # one named pair, temperature first, as the bundle applies them
    assert temperature == pytest.approx(fit_temperature(sharp, y))
    assert threshold == choose_threshold(y, apply_temperature(sharp, temperature))
    # The bundle applies T then the threshold: its decisions are those F2 chose on validation.
    assert threshold != choose_threshold(y, sharp)


def test_within_patient_auc_compares_only_inside_groups():
    # A: diseased film higher (win); B: lower (loss); C: tie (1/2); D: both healthy (no comparison);
    # E: one diseased film against two healthy ones, beating one of them.
    y = np.array([1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0])
    score = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.3, 0.4, 0.6, 0.7, 0.2])
    groups = ["A", "A", "B", "B", "C", "C", "D", "D", "E", "E", "E"]
    wins, pairs = m.within_group_comparisons(y, score, groups)
    assert sorted(zip(wins, pairs)) == [(0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (1.0, 2.0)]
    assert m.within_group_auc(y, score, groups) == pytest.approx(2.5 / 5)
    assert m.within_group_auc([1, 0], [0.9, 0.1], ["A", "B"]) is None  # no group holds both classes


def test_woman_level_confounding_shows_in_the_within_patient_auc():
    # Women with a diseased film score high on BOTH films: the pooled AUC looks good, the within-patient AUC is 0.
    rng = np.random.default_rng(0)
    n = 40
    sick = np.repeat([1, 0], n // 2)  # the first 20 women have one diseased film
    y = np.stack([sick, np.zeros(n, int)], 1).ravel()  # film 0 diseased (if sick), film 1 healthy
    base = np.where(sick == 1, 0.7, 0.3) + rng.normal(0, 0.05, n)
    score = np.stack([base, base + 0.01], 1).ravel()  # the healthy film scores a little higher
    groups = np.repeat([f"w{i}" for i in range(n)], 2)
    metrics = evaluate_predictions(y, np.stack([1 - score, score], 1), groups, ["normal", "abnormal"], n_boot=200)
    assert metrics["auc"]["value"] > 0.7
    within = metrics["within_group_auc"]
    assert within["value"] == 0.0 and within["n_groups"] == 20 and within["high"] == 0.0
    assert "within-patient AUC (20 patient groups holding both classes): 0.000" in render_table(metrics)


def test_linear_kappa_matches_sklearn_and_only_ordinal_tasks_report_it(multi):
    y, proba = multi
    expected = skm.cohen_kappa_score(y, proba.argmax(1), weights="linear")
    assert m.linear_kappa(y, proba) == pytest.approx(expected)
    assert b.fast_linear_kappa(y, proba) == pytest.approx(expected)
    # one grade off costs half of two grades off: predicting 1 for a true 0 beats predicting 2
    y3 = np.array([0, 0, 1, 1, 2, 2])
    near, far = np.eye(3)[[1, 0, 1, 1, 2, 2]], np.eye(3)[[2, 0, 1, 1, 2, 2]]
    assert m.linear_kappa(y3, near) > m.linear_kappa(y3, far)
    assert m.linear_kappa(np.zeros(4, int), np.eye(3)[[0, 0, 0, 0]]) is None  # one class: undefined
    groups = [f"g{i // 2}" for i in range(len(y))]
    ordinal = evaluate_predictions(y, proba, groups, list("abcd"), n_boot=200, ordinal=True)
    assert ordinal["kappa_linear"]["value"] == pytest.approx(expected)
    assert ordinal["kappa_linear"]["low"] <= expected <= ordinal["kappa_linear"]["high"]
    assert "linearly weighted kappa" in render_table(ordinal)
    nominal = evaluate_predictions(y, proba, groups, list("abcd"), n_boot=0)
    assert "kappa_linear" not in nominal and "kappa" not in render_table(nominal)


def test_exam_level_kappa_averages_a_womans_two_films():
    """Density per exam: the two films' probabilities averaged, then kappa over women (by hand)."""
    import pandas as pd

    from mammolens.evaluate.levels import level_metrics
    from mammolens.evaluate.predictions import predictions_frame

    # six women, one grade each; the second film of woman 1 alone would be called two grades off
    y = np.repeat([0, 0, 1, 1, 2, 2], 2)
    proba = np.array([[.8, .1, .1], [.6, .3, .1], [.7, .2, .1], [.1, .2, .7], [.2, .6, .2], [.3, .5, .2],
                      [.1, .3, .6], [.2, .5, .3], [.1, .2, .7], [.1, .1, .8], [.1, .3, .6], [.2, .2, .6]])
    exams = pd.DataFrame({"exam_id": [f"w{i // 2}" for i in range(12)], "laterality": ["L", "R"] * 6,
                          "view": ["MLO"] * 12})
    table = predictions_frame([f"f{i}" for i in range(12)], [f"w{i // 2}" for i in range(12)], y, proba,
                              ["F", "G", "D"], exams=exams)
    metrics, units = level_metrics(table, ["F", "G", "D"], "exam", method="mean", n_boot=100, ordinal=True)
    women = proba.reshape(6, 2, 3).mean(axis=1)
    assert np.allclose(units[["p_F", "p_G", "p_D"]].to_numpy(), women)
    expected = skm.cohen_kappa_score(y[::2], women.argmax(1), weights="linear")
    assert metrics["kappa_linear"]["value"] == pytest.approx(expected)
    assert m.linear_kappa(y, proba) < expected  # film by film, woman 1's second film costs two grades
    assert "kappa_linear" not in level_metrics(table, ["F", "G", "D"], "exam", method="mean", n_boot=0)[0]
