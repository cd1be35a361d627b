"""``mammolens cv`` with ``exams.level``: each fold bundle stores the aggregator its validation films chose,
and the pooled out-of-fold exams are scored with each fold's own aggregator and threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    assert "<h2>Exam level</h2>" in (out / "report.html").read_text()


def _film_threshold(out: Path, fold: int) -> float:
    return json.loads((out / "repeat0" / f"fold{fold}" / "bundle" / "bundle.json").read_text())["threshold"]


def test_the_ensembles_aggregator_is_chosen_on_the_set_aside_women(tmp_path: Path) -> None:
    """With --ensemble-part the ensemble's exam threshold comes from its own output on the set-aside women."""
    from mammolens.bundle import load_bundle
    from mammolens.engine import crossval
    from mammolens.engine.config import load_config
    from mammolens.engine.sources import task_samples
    from mammolens.engine.trainers import choose_operating_point
    from mammolens.evaluate.exams import aggregate
    from mammolens.evaluate.levels import exam_columns
    from mammolens.evaluate.predict import predict_manifest
    from mammolens.evaluate.thresholds import choose_threshold

    config = tmp_path / "tiny.yaml"
    tiny = dict(TINY, cache_dir=str(tmp_path / "cache"), exams={"level": "exam", "aggregate": "max"})
    config.write_text(yaml.safe_dump(tiny))
    cfg, out = load_config(config), tmp_path / "cv"
    crossval.run_cv(cfg, out, folds=2, n_boot=0, progress=False, ensemble_part=0.3)
    reserved = set(json.loads((out / "cv.json").read_text())["ensemble_part_samples"])
    ensemble = load_bundle(out / "ensemble")
    manifest, labels, _ = task_samples(cfg, progress=False)
    rows = [i for i, s in enumerate(manifest.df["sample_id"]) if s in reserved]
    part = manifest.subset(rows)
    served = predict_manifest(load_bundle(out / "ensemble"), part, cfg.cache_dir, progress=False)
    point = choose_operating_point(cfg.operating_point, labels[rows], served)  # what run_cv fitted (T = 1 output)
    from mammolens.evaluate.calibration import apply_temperature

    views = exam_columns(part).assign(y=labels[rows], p_abnormal=apply_temperature(served, point.temperature)[:, 1])
    exams = aggregate(views, "exam", "max")
    assert ensemble.aggregator["method"] == "max" and ensemble.aggregator["level"] == "exam"
    if exams["y"].nunique() == 2:
        expected = choose_threshold(exams["y"].to_numpy(), np.c_[1 - exams["p_abnormal"], exams["p_abnormal"]],
                                    cfg.operating_point.threshold, cfg.operating_point.beta)
        assert ensemble.aggregator["threshold"] == pytest.approx(expected)
    else:
        assert ensemble.aggregator["threshold"] is None
