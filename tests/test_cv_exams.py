"""``mammolens cv`` with ``exams.level``: each fold bundle stores the aggregator its validation films chose,
and the pooled out-of-fold exams are scored with each fold's own aggregator and threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mammolens.cli import main

TINY = {
    "name": "tiny-cv-exams",
    "data": {"source": "synthetic", "task": "normal-abnormal",
             "synthetic": {"n_per_class": 16, "size": 64, "seed": 2, "calc_fraction": 0.0}},
    "image_size": 32,
    "model": {"name": "scratch-cnn", "options": {"depth": 2, "width": 4}},
    "train": {"epochs": 1, "batch_size": 8, "patience": 0, "progress": False},
    "exams": {"level": "exam", "aggregate": "fitted"},
    "workers": 1,
}


def test_cv_reports_exam_figures_with_each_folds_fitted_aggregator(tmp_path: Path, capsys) -> None:
    from mammolens.evaluate.exams import aggregate
    from mammolens.evaluate.metrics import roc_auc

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, cache_dir=str(tmp_path / "cache"))))
    out = tmp_path / "cv"
    assert main(["cv", str(config), "--folds", "2", "--out", str(out), "--n-boot", "50"]) == 0
    assert "exam level (pooled out-of-fold films combined by fitted)" in capsys.readouterr().out
    films = pd.read_csv(out / "predictions.csv", dtype={"exam_id": str, "group": str})
    exams = pd.read_csv(out / "predictions-exam.csv", dtype={"sample_id": str})
    metrics = json.loads((out / "metrics.json").read_text())["levels"]["exam"]
    assert metrics["n_samples"] == len(exams) == films["exam_id"].nunique()
    pooled = []
    for fold, part in films.groupby("fold"):
        stored = json.loads((out / "repeat0" / f"fold{fold}" / "bundle" / "bundle.json").read_text())["aggregator"]
        assert stored["method"] == "fitted" and stored["level"] == "exam" and len(stored["params"]["coef"]) == 2
        views = part.rename(columns={"label_index": "y"})
        by_hand = aggregate(views[["exam_id", "laterality", "view", "p_abnormal", "y"]], "exam", "fitted", stored["params"])
        pooled.append(by_hand)
        decided = exams.set_index("sample_id").loc[by_hand["exam_id"], "decision"]
        threshold = stored["threshold"] if stored["threshold"] is not None else _film_threshold(out, fold)
        assert (decided.to_numpy() == ["abnormal" if p >= threshold else "normal" for p in by_hand["p_abnormal"]]).all()
    pooled = pd.concat(pooled)
    assert metrics["auc"]["value"] == pytest.approx(roc_auc(pooled["y"], pooled["p_abnormal"]), abs=1e-9)
    ensemble = json.loads((out / "ensemble" / "bundle.json").read_text())["aggregator"]
    assert ensemble["method"] == "fitted" and ensemble["level"] == "exam"


def _film_threshold(out: Path, fold: int) -> float:
    return json.loads((out / "repeat0" / f"fold{fold}" / "bundle" / "bundle.json").read_text())["threshold"]
