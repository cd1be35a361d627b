"""`explain-eval` on a `mammolens cv` run scores each film with the fold model that held it out, and the
patch classifier's `scoremap` method is its own window map."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mammolens.bundle.model import load_model_bundle, save_bundle
from mammolens.cli import main
from mammolens.data.adapters.base import load_source
from mammolens.data.synthetic import generate
from mammolens.engine.crossval import held_out_bundles
from mammolens.explain.api import explain_image
from mammolens.explain.evaluation import evaluate_localisation
from mammolens.models import create_model
from mammolens.patches.geometry import map_to_pixels
from mammolens.utils.errors import ConfigError


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("oof")
    films = tmp / "films"
    generate(films, n_per_class=10, size=64, seed=1, calc_fraction=0.0)
    config = {
        "name": "tiny-oof", "cache_dir": str(tmp / "cache"), "workers": 1,
        "data": {"source": str(films), "task": "normal-abnormal"},
        "preprocess": {"steps": [{"name": "orient"}, {"name": "crop_breast"}, {"name": "resize", "size": 32}]},
        "model": {"name": "patch-classifier",
                  "options": {"backbone": "tiny", "patch_size": 16, "stride": 8, "aggregate": "max",
                              "training": {"c_values": [1.0], "negatives_per_film": 3, "positives_per_finding": 2}}},
    }  # fmt: skip
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["cv", str(path), "--folds", "2", "--out", str(tmp / "cv"), "--n-boot", "10"]) == 0
    return tmp / "cv", films


def test_each_film_is_scored_by_the_fold_that_held_it_out(cv_run, tmp_path: Path) -> None:
    cv, films = cv_run
    folds = held_out_bundles(cv)
    assert len(folds) == 2 and not set.intersection(*folds.values())
    out = tmp_path / "loc"
    assert main(["explain-eval", str(cv), str(films), "--out", str(out), "--method", "scoremap"]) == 0
    with open(out / "localisation_per_image.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "scoremap"]
    records = {r["sample_id"]: r for r in load_source(str(films)).manifest.df.to_dict("records")}
    assert len(rows) == 20  # every benign and malignant film has a circle, and every film is in one held-out fold
    (first, ids), (second, _) = folds.items()
    mine = sorted(s for s in ids if s in {r["sample_id"] for r in rows})
    assert mine
    held = evaluate_localisation(load_model_bundle(first), [records[s] for s in mine], model_name="x", methods=["scoremap"])
    other = evaluate_localisation(load_model_bundle(second), [records[s] for s in mine], model_name="x", methods=["scoremap"])
    got = {r["sample_id"]: float(r["energy_inside"]) for r in rows if r["sample_id"] in mine}
    own = {r["sample_id"]: r["energy_inside"] for r in held.rows if r["method"] == "scoremap"}
    wrong = {r["sample_id"]: r["energy_inside"] for r in other.rows if r["method"] == "scoremap"}
    assert got == pytest.approx(own, rel=2e-3)  # the CSV keeps 3-4 digits
    assert max(abs(got[s] - wrong[s]) for s in mine) > 0.005  # the other fold's model gives other maps
    assert "cv run" in (out / "localisation.html").read_text()


def test_scoremap_is_the_windows_target_probability(cv_run) -> None:
    cv, _ = cv_run
    bundle = load_model_bundle(next(iter(held_out_bundles(cv))))
    rng = np.random.default_rng(0)
    film = np.zeros((32, 32), np.float32)
    film[4:28, 2:26] = rng.uniform(0.2, 0.9, (24, 24))
    explanation = explain_image(bundle, film, method="scoremap")
    with torch.inference_mode():
        seen = bundle.to_input(explanation.input_image[None])  # the preprocessed film the model saw
        maps = bundle.model.score_map(seen)[0, explanation.target_index].numpy()
    expected = map_to_pixels(maps, bundle.model.grid(32, 32), bundle.model.patch_size, (32, 32))
    assert expected.max() > expected.min()  # windows differ: a constant map would pass anything
    np.testing.assert_allclose(explanation.input_heatmap, expected / expected.max(), atol=1e-5)


def test_scoremap_on_another_model_is_one_line(tmp_path: Path) -> None:
    model = create_model("scratch-cnn", 2, depth=2, width=4, hidden=0, dropout=0.0)
    bundle = load_model_bundle(save_bundle(tmp_path / "b", model, classes=("benign", "malignant"), task="benign-malignant",
                                     preprocess={"steps": [{"name": "resize", "size": 32}]}, normalisation=None,
                                     metrics={}, provenance={}, config={}))
    with pytest.raises(ConfigError, match="needs a patch-classifier"):
        explain_image(bundle, np.full((40, 40), 0.5, np.float32), method="scoremap")


def test_a_folder_that_is_not_a_cv_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a mammolens cv run"):
        held_out_bundles(tmp_path)
