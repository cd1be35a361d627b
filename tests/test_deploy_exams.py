"""The Predictor's exam-level call: views scored, then combined per breast and exam by evaluate.exams."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploy_fixtures import bundle_dir, film, make_bundle, write_dicom  # noqa: F401 - bundle_dir is a fixture
from mammolens.deploy.predictor import Predictor
from mammolens.utils.errors import ConfigError, DataError

SIDES = ["L", "L", "R", "R"]
VIEWS = ["CC", "MLO", "CC", "MLO"]


def _with_aggregator(bundle, aggregator):
    path = bundle / "bundle.json"
    manifest = json.loads(path.read_text())
    manifest["aggregator"] = aggregator
    path.write_text(json.dumps(manifest))
    return bundle


def test_exam_is_the_max_of_its_views_by_default(bundle_dir):
    predictor = Predictor.load(bundle_dir)
    films = [film(i) for i in range(4)]
    exam = predictor.predict_exam(films, lateralities=SIDES, views=VIEWS)
    alone = [p.probabilities["malignant"] for p in predictor.predict_batch(films, lateralities=SIDES)]
    assert [v.probabilities["malignant"] for v in exam.views] == pytest.approx(alone, abs=1e-6)
    assert exam.aggregate == "max"
    assert exam.breasts["L"].probabilities["malignant"] == pytest.approx(max(alone[:2]), abs=1e-6)
    assert exam.breasts["R"].probabilities["malignant"] == pytest.approx(max(alone[2:]), abs=1e-6)
    assert exam.exam.probabilities["malignant"] == pytest.approx(max(alone), abs=1e-6)
    assert exam.exam.decision == ("malignant" if max(alone) >= 0.4 else "benign")
    assert set(exam.to_dict()) == {"exam", "breasts", "views", "aggregate"}


def test_the_bundles_aggregator_and_threshold_are_applied(tmp_path):
    bundle = _with_aggregator(make_bundle(tmp_path / "b"), {"method": "mean", "params": None, "threshold": 0.0})
    predictor = Predictor.load(bundle)
    films = [film(i) for i in range(4)]
    exam = predictor.predict_exam(films, lateralities=SIDES, views=VIEWS)
    p = [v.probabilities["malignant"] for v in exam.views]
    assert exam.aggregate == "mean"
    assert exam.exam.probabilities["malignant"] == pytest.approx(((p[0] + p[1]) / 2 + (p[2] + p[3]) / 2) / 2, abs=1e-6)
    assert exam.exam.threshold == 0.0 and exam.exam.decision == "malignant"
    assert exam.views[0].threshold == 0.4  # films keep the film threshold
    assert predictor.predict_exam(films, lateralities=SIDES, method="max").aggregate == "max"
    with pytest.raises(ConfigError, match="needs its parameters"):
        predictor.predict_exam(films, lateralities=SIDES, method="fitted")


def test_sides_come_from_dicom_files_or_must_be_given(bundle_dir, tmp_path):
    predictor = Predictor.load(bundle_dir)
    files = [write_dicom(tmp_path / f"{i}.dcm", film(i), laterality=side) for i, side in enumerate(SIDES)]
    exam = predictor.predict_exam(files, views=VIEWS)
    assert set(exam.breasts) == {"L", "R"}
    with pytest.raises(DataError, match="laterality is unknown"):
        predictor.predict_exam([film(0), film(1)])
    with pytest.raises(ConfigError, match="2 views but 1 lateralities"):
        predictor.predict_exam([film(0), film(1)], lateralities=["L"])


def test_bilateral_bundle_reads_each_view_with_the_other_breasts_same_view(tmp_path):
    predictor = Predictor.load(make_bundle(tmp_path / "bi", bilateral=True))
    films = [film(i) for i in range(4)]
    exam = predictor.predict_exam(films, lateralities=SIDES, views=VIEWS)
    paired = predictor.predict(films[0], laterality="L", other=films[2])
    assert exam.views[0].probabilities["malignant"] == pytest.approx(paired.probabilities["malignant"], abs=1e-6)


def test_actors_are_for_the_ray_engine(bundle_dir, tmp_path, capsys):
    from deploy_fixtures import write_png
    from mammolens.cli import main

    png = write_png(tmp_path / "a.png", film(0))
    assert main(["predict", str(bundle_dir), str(png), "--out", str(tmp_path / "r.csv"), "--actors", "2"]) == 2
    assert "--actors is for --engine ray" in capsys.readouterr().err
    assert main(["predict", str(bundle_dir), str(png), "--out", str(tmp_path / "r.csv"), "--engine", "ray",
                 "--actors", "0"]) == 2  # typer's own range check: no Ray started
