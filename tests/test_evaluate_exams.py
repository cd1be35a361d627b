"""The exam room: views -> breast -> exam aggregation, labels at each level, the fitted combination."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mammolens.utils.errors import ConfigError, DataError
from mammolens.evaluate.bootstrap import bootstrap_cis, fast_auc
from mammolens.evaluate.exams import AGGREGATORS, aggregate, derive_exam_ids, fit_aggregator
from mammolens.evaluate.metrics import roc_auc

SIDES_VIEWS = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]


def toy_views() -> pd.DataFrame:
    """Four four-view exams of three women (w2 has two exams); the malignant views are marked y=1."""
    exams = {  # exam_id: (woman, [p per view in SIDES_VIEWS order], [y per view])
        "E1": ("w1", [0.1, 0.2, 0.3, 0.1], [0, 0, 0, 0]),
        "E2": ("w2", [0.2, 0.1, 0.6, 0.4], [0, 0, 1, 0]),
        "E3": ("w3", [0.5, 0.2, 0.1, 0.1], [0, 0, 0, 0]),
        "E4": ("w2", [0.4, 0.2, 0.1, 0.1], [0, 1, 0, 0]),
    }
    rows = []
    for exam, (woman, ps, ys) in exams.items():
        for (side, view), p, y in zip(SIDES_VIEWS, ps, ys):
            rows.append({"sample_id": f"{exam}-{side}{view}", "exam_id": exam, "group": woman,
                         "laterality": side, "view": view, "p_malignant": p, "y": y})
    return pd.DataFrame(rows)


def test_exam_level_auc_equals_a_hand_computation():
    exams = aggregate(toy_views(), "exam", "max")
    assert exams["exam_id"].tolist() == ["E1", "E2", "E3", "E4"]
    # by hand: exam score = its largest view probability; exam positive if any view is
    assert exams["p_malignant"].tolist() == [0.3, 0.6, 0.5, 0.4]
    assert exams["y"].tolist() == [0, 1, 0, 1]
    assert exams["n_views"].tolist() == [4, 4, 4, 4]
    # positives {0.6, 0.4} against negatives {0.3, 0.5}: 0.6>0.3, 0.6>0.5, 0.4>0.3, 0.4<0.5 -> 3 of 4
    assert roc_auc(exams["y"], exams["p_malignant"]) == pytest.approx(3 / 4)
    # the film-level AUC on the same views is another number: aggregation is not a no-op
    views = toy_views()
    assert roc_auc(views["y"], views["p_malignant"]) != pytest.approx(3 / 4)
    # sides unknown: the views go straight to the exam, same max
    assert aggregate(views.drop(columns=["laterality"]), "exam")["p_malignant"].tolist() == [0.3, 0.6, 0.5, 0.4]


def test_breast_level_rows_labels_and_passthrough():
    breasts = aggregate(toy_views(), "breast", "max")
    assert len(breasts) == 8
    e2 = breasts[breasts["exam_id"] == "E2"].set_index("laterality")
    assert e2.loc["L", "p_malignant"] == 0.2 and e2.loc["R", "p_malignant"] == 0.6
    assert e2.loc["L", "y"] == 0 and e2.loc["R", "y"] == 1
    assert (breasts["n_views"] == 2).all()
    assert "group" in breasts.columns  # the woman passes through, so bootstraps resample women
    assert "view" not in breasts.columns and "sample_id" not in breasts.columns  # vary inside a breast


def test_mean_exam_is_the_mean_of_its_breasts():
    views = toy_views()
    views = views[~((views["exam_id"] == "E1") & (views["view"] == "MLO") & (views["laterality"] == "L"))]
    exams = aggregate(views, "exam", "mean").set_index("exam_id")
    # E1: left breast CC only (0.1), right (0.3 + 0.1) / 2 = 0.2 -> (0.1 + 0.2) / 2, not the view mean 0.5/3
    assert exams.loc["E1", "p_malignant"] == pytest.approx(0.15)
    assert exams.loc["E1", "n_views"] == 3


def test_multiclass_max_takes_the_most_severe_view_whole():
    rows = [
        {"exam_id": "X", "laterality": "L", "view": "CC", "p_a": 0.7, "p_b": 0.1, "p_c": 0.1, "p_d": 0.1},
        {"exam_id": "X", "laterality": "L", "view": "MLO", "p_a": 0.1, "p_b": 0.2, "p_c": 0.6, "p_d": 0.1},
        {"exam_id": "X", "laterality": "R", "view": "CC", "p_a": 0.4, "p_b": 0.0, "p_c": 0.0, "p_d": 0.6},
    ]
    views = pd.DataFrame(rows).assign(y=[0, 2, 1])
    exam = aggregate(views, "exam", "max").iloc[0]
    # expected indices: 0.6, 1.7, 1.8 -> the right CC view is the most severe, taken whole
    assert [exam[c] for c in ("p_a", "p_b", "p_c", "p_d")] == [0.4, 0.0, 0.0, 0.6]
    assert exam["y"] == 2
    mean = aggregate(views, "exam", "mean").iloc[0]
    assert mean[["p_a", "p_b", "p_c", "p_d"]].sum() == pytest.approx(1.0)
    assert mean["p_a"] == pytest.approx(((0.7 + 0.1) / 2 + 0.4) / 2)


def test_unlabelled_views_are_ignored_and_all_unlabelled_stays_unlabelled():
    views = toy_views()
    views.loc[views["exam_id"] == "E1", "y"] = -1
    views.loc[(views["exam_id"] == "E2") & (views["laterality"] == "L"), "y"] = -1
    exams = aggregate(views, "exam").set_index("exam_id")
    assert exams.loc["E1", "y"] == -1 and exams.loc["E2", "y"] == 1


def test_fitted_aggregator_is_plain_json_and_applied_the_same_everywhere():
    rng = np.random.default_rng(0)
    rows = []
    for e in range(60):
        for side in "LR":
            y = int(rng.random() < 0.3)
            for view in ("CC", "MLO"):
                p = float(np.clip(rng.normal(0.65 if y else 0.35, 0.15), 0.01, 0.99))
                rows.append({"exam_id": f"E{e}", "group": f"w{e}", "laterality": side, "view": view,
                             "p_malignant": p, "y": y})
    views = pd.DataFrame(rows)
    params = json.loads(json.dumps(fit_aggregator(views)))
    assert params["method"] == "fitted" and params["n_breasts"] == 120
    breasts = aggregate(views, "breast", "fitted", params)
    maxes = aggregate(views, "breast", "max")
    means = aggregate(views, "breast", "mean")
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    z = params["coef"][0] * logit(maxes["p_malignant"]) + params["coef"][1] * logit(means["p_malignant"]) + params["intercept"]
    assert np.allclose(breasts["p_malignant"], 1 / (1 + np.exp(-z)))
    exams = aggregate(views, "exam", "fitted", params)
    per_exam = breasts.groupby("exam_id")["p_malignant"].max()
    assert np.allclose(exams.set_index("exam_id")["p_malignant"], per_exam.loc[exams["exam_id"]])
    assert roc_auc(exams["y"], exams["p_malignant"]) > 0.8
    # the same penalised log-loss as scikit-learn's, which agrees when its weights come out >= 0
    from sklearn.linear_model import LogisticRegression

    x = np.column_stack([logit(maxes["p_malignant"]), logit(means["p_malignant"])])
    free = LogisticRegression(C=1.0, tol=1e-10).fit(x, maxes["y"])
    assert (free.coef_ >= 0).all()
    assert np.allclose(params["coef"], free.coef_[0], atol=1e-4) and params["intercept"] == pytest.approx(free.intercept_[0], abs=1e-4)
    # validation views ranked upside down: no negative weight, the breasts fall back to the base rate
    flipped = fit_aggregator(views.assign(y=1 - views["y"]))
    assert min(flipped["coef"]) >= 0 and max(flipped["coef"]) < 1e-6


def test_bad_input_is_one_clear_error():
    views = toy_views()
    with pytest.raises(ConfigError, match="known: fitted, max, mean"):
        aggregate(views, "exam", "median")
    with pytest.raises(ConfigError, match="needs its parameters"):
        aggregate(views, "exam", "fitted")
    with pytest.raises(ConfigError, match="level 'patient'"):
        aggregate(views, "patient")
    with pytest.raises(DataError, match="exam_id"):
        aggregate(views.drop(columns=["exam_id"]), "exam")
    mixed = views.copy()
    mixed.loc[0, "group"] = "w9"
    with pytest.raises(DataError, match="more than one group"):
        aggregate(mixed, "exam")
    odd = views.copy()
    odd.loc[0, "laterality"] = ""
    with pytest.raises(DataError, match="laterality"):
        aggregate(odd, "breast")
    three = pd.DataFrame({"exam_id": ["a"], "laterality": ["L"], "p_x": [0.2], "p_y": [0.3], "p_z": [0.5], "y": [1]})
    with pytest.raises(ConfigError, match="binary only"):
        fit_aggregator(three)
    assert AGGREGATORS.names() == ["fitted", "max", "mean"]


def test_exam_bootstrap_resamples_women_not_exams():
    exams = aggregate(toy_views(), "exam", "max")
    ci = bootstrap_cis({"auc": fast_auc}, exams["y"], exams["p_malignant"], exams["group"], n_boot=50)
    assert ci["auc"]["n_groups"] == 3  # E2 and E4 are one woman: drawn together or not at all
    assert ci["auc"]["value"] == pytest.approx(0.75)


def test_derive_exam_ids_from_source_and_group():
    frame = pd.DataFrame({"source": ["mias", "vindr"], "group": ["p1", "p2"]})
    assert derive_exam_ids(frame).tolist() == ["mias:p1", "vindr:p2"]
    assert derive_exam_ids(frame.assign(exam_id=["", "s9"])).tolist() == ["mias:p1", "vindr:s9"]


def _film_table(tmp_path):
    """The toy views as a predictions.csv written and read back, exam columns included."""
    from mammolens.evaluate.predictions import predictions_frame, read_predictions, write_predictions

    views = toy_views()
    p = views["p_malignant"].to_numpy()
    table = predictions_frame(views["sample_id"], views["group"], views["y"], np.c_[1 - p, p], ["benign", "malignant"],
                              exams=views[["exam_id", "laterality", "view"]])
    write_predictions(tmp_path / "predictions.csv", table)
    return read_predictions(tmp_path / "predictions.csv")


def test_level_metrics_from_a_predictions_table(tmp_path):
    from mammolens.evaluate.levels import level_metrics

    table, classes = _film_table(tmp_path)
    metrics, exams = level_metrics(table, classes, "exam", n_boot=20)
    assert exams["sample_id"].tolist() == ["E1", "E2", "E3", "E4"]
    assert exams["label"].tolist() == ["benign", "malignant", "benign", "malignant"]
    assert metrics["auc"]["value"] == pytest.approx(0.75) and metrics["n_samples"] == 4
    assert metrics["n_groups"] == 3 and metrics["level"] == "exam"
    breasts = level_metrics(table, classes, "breast", n_boot=20)[1]
    assert breasts["sample_id"].iloc[:2].tolist() == ["E1/L", "E1/R"] and (breasts["n_views"] == 2).all()


def test_level_of_a_table_without_exam_columns_says_so(tmp_path):
    from mammolens.evaluate.levels import level_metrics

    table, classes = _film_table(tmp_path)
    with pytest.raises(DataError, match="lacks exam_id, laterality, view"):
        level_metrics(table.drop(columns=["exam_id", "laterality", "view"]), classes, "exam")
    with pytest.raises(ConfigError, match="known: film, breast, exam"):
        level_metrics(table, classes, "woman")


def test_choose_aggregator_uses_the_validation_units_only(tmp_path):
    from mammolens.evaluate.levels import choose_aggregator

    table, classes = _film_table(tmp_path)
    seen = {}

    def choose(y, proba):
        seen["y"], seen["p"] = y.tolist(), proba[:, 1].tolist()
        return 0.45

    chosen = choose_aggregator(table, classes, "exam", "max", choose)
    assert chosen == {"method": "max", "params": None, "level": "exam", "threshold": 0.45}
    assert seen == {"y": [0, 1, 0, 1], "p": [0.3, 0.6, 0.5, 0.4]}  # the four exams, not the 16 films
    assert choose_aggregator(table, classes, "film", "mean", choose)["threshold"] is None


def test_folded_levels_use_each_folds_own_aggregator_and_threshold(tmp_path):
    from mammolens.evaluate.levels import folded_level_predictions

    table, classes = _film_table(tmp_path)
    table["fold"] = table["exam_id"].map({"E1": 0, "E2": 0, "E3": 1, "E4": 1})
    folds = {0: ({"method": "max", "params": None, "threshold": 0.55}, 0.5), 1: ({"method": "mean"}, 0.2)}
    exams = folded_level_predictions(table, classes, "exam", folds).set_index("sample_id")
    assert exams.loc["E2", "p_malignant"] == pytest.approx(0.6) and exams.loc["E2", "decision"] == "malignant"
    assert exams.loc["E1", "decision"] == "benign"  # 0.3 < 0.55
    assert exams.loc["E3", "p_malignant"] == pytest.approx(((0.5 + 0.2) / 2 + 0.1) / 2)  # mean, fold 1
    assert exams.loc["E3", "decision"] == "malignant"  # 0.225 >= fold 1's film threshold 0.2
    assert exams["fold"].tolist() == [0, 0, 1, 1]
    table.loc[0, "fold"] = 1  # one film of E1 in another fold: its woman was split
    with pytest.raises(DataError, match="several folds"):
        folded_level_predictions(table, classes, "exam", folds)


def test_config_names_the_known_aggregators_and_levels():
    from mammolens.evaluate.levels import LEVELS
    from mammolens.engine.config import ExamsConfig

    for name in AGGREGATORS.names():
        ExamsConfig(aggregate=name)
    for level in LEVELS:
        ExamsConfig(level=level)
    with pytest.raises(ConfigError, match="known: fitted, max, mean"):
        ExamsConfig(aggregate="median")
