"""The report is one self-contained HTML page, for binary and multi-class evaluations."""

from __future__ import annotations

import re

import numpy as np

from mammolens.evaluate.predictions import predictions_frame, read_predictions, write_predictions
from mammolens.evaluate.report import write_report
from mammolens.evaluate.summary import evaluate_predictions


def _case(n_classes, n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    proba = rng.dirichlet(np.ones(n_classes), n)
    proba[np.arange(n), y] += 0.4
    proba /= proba.sum(1, keepdims=True)
    groups = [f"w{i // 2}" for i in range(n)]
    classes = [f"c{i}" for i in range(n_classes)] if n_classes > 2 else ["benign", "malignant"]
    return y, proba, groups, classes


def test_binary_and_multiclass_reports_are_self_contained(tmp_path):
    calls = []

    def thumbnails(sample_id):
        calls.append(sample_id)
        return np.random.default_rng(0).random((32, 32)), [(16.0, 16.0, 5.0)]

    for n_classes in (2, 4):
        y, proba, groups, classes = _case(n_classes)
        metrics = evaluate_predictions(y, proba, groups, classes, 0.4, n_boot=100)
        df = predictions_frame([f"s{i}" for i in range(len(y))], groups, y, proba, classes, 0.4)
        history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_auc": 0.5 + e / 20} for e in (1, 2, 3)]
        out = write_report(tmp_path / f"r{n_classes}.html", metrics, df, thumbnails=thumbnails, n_thumbnails=2, history=history,
                           command="mammolens evaluate b s", config={"model": {"name": "x"}})
        html = out.read_text()
        assert html.count("data:image/png;base64,") >= 6  # curves, learning curves, thumbnails
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html
        assert "mammolens evaluate b s" in html and "Learning curves" in html
        assert ("Worst false negatives" in html) == (n_classes == 2)
        assert ("Per-class table" in html) == (n_classes > 2)
    assert calls  # the worst errors were drawn


def test_predictions_round_trip_with_fold_and_repeat(tmp_path):
    y, proba, groups, classes = _case(3)
    df = predictions_frame([f"s{i}" for i in range(len(y))], groups, y, proba, classes, fold=1, repeat=0)
    write_predictions(tmp_path / "p.csv", df)
    back, found = read_predictions(tmp_path / "p.csv")
    assert found == classes and list(back.columns)[-2:] == ["fold", "repeat"]
    assert np.allclose(back[[f"p_{c}" for c in classes]].to_numpy(), proba, atol=1e-5)
    assert (back["decision"] == [classes[i] for i in proba.argmax(1)]).all()
