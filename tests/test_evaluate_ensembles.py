"""Ensemble bundles: mean and stacked combiners stored as JSON numbers, fitted on out-of-fold predictions only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mammolens
from mammolens.bundle import EnsembleBundle, save_bundle, save_mean_ensemble
from mammolens.cli import main
from mammolens.engine.stacking import build_ensemble
from mammolens.evaluate import ensembles as ens
from mammolens.evaluate.calibration import apply_temperature
from mammolens.evaluate.predict import predict_manifest
from mammolens.evaluate.predictions import predictions_frame, write_predictions
from mammolens.evaluate.thresholds import operating_point
from mammolens.models import create_model
from mammolens.utils.errors import ConfigError, DataError

CLASSES = ["benign", "malignant"]


def make_bundle(path: Path, seed: int, *, size: int = 32, task: str = "benign-malignant",
                classes: list[str] = CLASSES, temperature: float = 1.4) -> Path:
    torch.manual_seed(seed)
    model = create_model("scratch-cnn", len(classes), depth=1, width=4, hidden=8)
    return save_bundle(path, model, classes=classes, task=task, preprocess={"steps": [{"name": "resize", "size": size}]},
                       normalisation={"mean": 0.5, "std": 0.25}, metrics={}, provenance={}, config={},
                       temperature=temperature)


def fake_run(root: Path, seed: int, y: np.ndarray, groups: np.ndarray, p1: np.ndarray, *, temperature: float = 1.0,
             **bundle_kw) -> Path:
    """A cv run directory as the cv verb writes it: ensemble/ (at ``temperature``) and pooled out-of-fold
    predictions.csv (the fold models' own, temperature-scaled, probabilities)."""
    member = make_bundle(root / "fold0" / "bundle", seed, **bundle_kw)
    save_mean_ensemble(root / "ensemble", [member], threshold=0.5, temperature=temperature)
    ids = [f"s{i:03d}" for i in range(len(y))]
    write_predictions(root / "predictions.csv", predictions_frame(ids, groups, y, np.stack([1 - p1, p1], 1), CLASSES))
    return root


@pytest.fixture()
def oof():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"w{i:02d}" for i in range(40)], 2)
    y = np.repeat(rng.integers(0, 2, 40), 2)
    a = np.clip(0.4 * y + 0.6 * rng.random(80), 0.01, 0.99)
    b = np.clip(0.2 * y + 0.8 * rng.random(80), 0.01, 0.99)
    return y, groups, a, b


def test_mean_ensemble_is_a_bundle_that_travels_alone(tmp_path):
    a, b = make_bundle(tmp_path / "a", 0), make_bundle(tmp_path / "b", 1)
    out = save_mean_ensemble(tmp_path / "ens", [a, b], threshold=0.3, temperature=1.5)
    batch = np.random.default_rng(0).random((4, 32, 32), dtype=np.float32)
    expected = apply_temperature((mammolens.load_bundle(a).predict_proba(batch)
                                  + mammolens.load_bundle(b).predict_proba(batch)) / 2, 1.5)
    for path in (a, b):
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    bundle = mammolens.load_bundle(out)
    assert isinstance(bundle, EnsembleBundle)
    assert (bundle.classes, bundle.task, bundle.threshold, bundle.temperature) == (CLASSES, "benign-malignant", 0.3, 1.5)
    assert bundle.preprocess == {"steps": [{"name": "resize", "size": 32}]}
    assert np.allclose(bundle.predict_proba(batch), expected, atol=1e-6)


def test_members_with_different_preprocessing_are_scored_through_their_own_caches(tmp_path):
    from mammolens.data.adapters.base import load_source
    from mammolens.data.synthetic import generate

    manifest = load_source(generate(tmp_path / "data", n_per_class=2, size=64, seed=3)).manifest
    a, b = make_bundle(tmp_path / "a", 0, size=32), make_bundle(tmp_path / "b", 1, size=48)
    bundle = mammolens.load_bundle(save_mean_ensemble(tmp_path / "ens", [a, b], threshold=0.5, temperature=1.0))
    assert bundle.preprocess is None
    with pytest.raises(ConfigError, match="preprocess differently"):
        bundle.predict_proba(np.zeros((1, 32, 32), np.float32))
    cache = tmp_path / "cache"
    got = predict_manifest(bundle, manifest, cache, workers=1, progress=False)
    each = [predict_manifest(mammolens.load_bundle(p), manifest, cache, workers=1, progress=False) for p in (a, b)]
    assert got.shape == (len(manifest), 2) and np.allclose(got, (each[0] + each[1]) / 2)
    assert not np.allclose(each[0], each[1])


def test_members_that_disagree_are_refused(tmp_path):
    a = make_bundle(tmp_path / "a", 0)
    c = make_bundle(tmp_path / "c", 0, task="normal-abnormal", classes=["normal", "abnormal"])
    with pytest.raises(ConfigError, match="disagree on task"):
        save_mean_ensemble(tmp_path / "ens", [a, c], threshold=0.5, temperature=1.0)
    assert not (tmp_path / "ens").exists()


def test_damaged_ensembles_fail_with_one_line(tmp_path):
    a = make_bundle(tmp_path / "a", 0)
    out = save_mean_ensemble(tmp_path / "ens", [a], threshold=0.5, temperature=1.0)
    member_json = out / "members" / "0" / "bundle.json"
    member_json.write_text(member_json.read_text().replace('"threshold": 0.5', '"threshold": 0.9'))
    with pytest.raises(DataError, match="does not match its checksum"):
        mammolens.load_bundle(out)
    (out / "bundle.json").write_text('{"kind": "ensemble", ')
    with pytest.raises(DataError, match="bundle.json"):
        mammolens.load_bundle(out)


@pytest.mark.parametrize("method", ["logreg", "linear-svc", "svc"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_stored_stacker_numbers_reproduce_sklearn_on_new_data(method, n_classes):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import SVC, LinearSVC

    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 90)
    groups = np.repeat(np.arange(45), 2).astype(str)
    members = []
    for _ in range(2):
        p = rng.dirichlet(np.ones(n_classes), 90)
        p[np.arange(90), y] += 0.5
        members.append(p / p.sum(1, keepdims=True))
    combiner = json.loads(json.dumps(ens.fit_stacker(method, members, y, groups, seed=0)))  # plain JSON numbers
    new = [rng.dirichlet(np.ones(n_classes), 30) for _ in range(2)]
    x, x_new = ens.stack_features(members), ens.stack_features(new)
    if method == "logreg":
        ref = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x, y)
    else:
        base = (LinearSVC(class_weight="balanced", random_state=0) if method == "linear-svc"
                else SVC(class_weight="balanced", random_state=0))
        if method == "svc" and n_classes > 2:
            base = OneVsRestClassifier(base)
        ref = CalibratedClassifierCV(base, method="sigmoid", cv=ens._cv(y, groups, 0)).fit(x, y)
    assert np.allclose(ens.combiner_output(combiner, new), ref.predict_proba(x_new), atol=1e-6)


def test_stacking_sees_only_the_out_of_fold_predictions(tmp_path, oof):
    from sklearn.linear_model import LogisticRegression

    y, groups, a, b = oof
    runs = [fake_run(tmp_path / "r1", 0, y, groups, a), fake_run(tmp_path / "r2", 1, y, groups, b)]
    path, metrics = build_ensemble(tmp_path / "stack", runs, "logreg", n_boot=50)
    stacked = mammolens.load_bundle(path)
    ref = LogisticRegression(class_weight="balanced", max_iter=1000).fit(np.stack([a, b], 1), y)
    assert np.allclose(stacked.combiner["coef"], ref.coef_) and np.allclose(stacked.combiner["intercept"], ref.intercept_)
    assert 0 < stacked.threshold < 1 and metrics["n_samples"] == 80
    # Other member models (same out-of-fold files) give the same combiner, threshold and temperature...
    make_bundle(tmp_path / "other", 7)
    save_mean_ensemble(tmp_path / "r1" / "ensemble", [tmp_path / "other"], threshold=0.5, temperature=1.0)
    again = mammolens.load_bundle(build_ensemble(tmp_path / "stack2", runs, "logreg", n_boot=50)[0])
    assert (again.combiner, again.threshold, again.temperature) == (stacked.combiner, stacked.threshold,
                                                                     stacked.temperature)
    # ...while other out-of-fold labels change it.
    fake_run(tmp_path / "r1", 0, 1 - y, groups, a)
    fake_run(tmp_path / "r2", 1, 1 - y, groups, b)
    flipped = mammolens.load_bundle(build_ensemble(tmp_path / "stack3", runs, "logreg", n_boot=50)[0])
    assert not np.allclose(flipped.combiner["coef"], stacked.combiner["coef"])


def test_the_stacker_is_fitted_on_what_its_members_serve(tmp_path, oof):
    """Members are served at their ensemble's temperature: the stacker, its threshold and its temperature
    are fitted on the out-of-fold probabilities at that temperature, not on the fold models' raw rows."""
    y, groups, a, b = oof
    runs = [fake_run(tmp_path / "r1", 0, y, groups, a, temperature=2.5),
            fake_run(tmp_path / "r2", 1, y, groups, b, temperature=0.6)]
    stacked = mammolens.load_bundle(build_ensemble(tmp_path / "stack", runs, "logreg", n_boot=0)[0])
    served = [apply_temperature(np.stack([1 - a, a], 1), 2.5), apply_temperature(np.stack([1 - b, b], 1), 0.6)]
    assert stacked.members[0].temperature == 2.5 and stacked.members[0].members[0].temperature == 1.4
    expected = ens.fit_stacker("logreg", served, y, groups)
    np.testing.assert_allclose(stacked.combiner["coef"], expected["coef"], rtol=1e-6)
    held_out = ens.nested_stacking_proba("logreg", served, y, groups)
    temperature, threshold = operating_point(y, held_out, "fbeta", beta=2.0)
    assert (stacked.threshold, stacked.temperature) == pytest.approx((threshold, temperature))


def test_ensemble_verb_and_its_errors(tmp_path, oof, capsys):
    y, groups, a, b = oof
    r1, r2 = fake_run(tmp_path / "r1", 0, y, groups, a), fake_run(tmp_path / "r2", 1, y, groups, b)
    assert main(["ensemble", str(r1), str(r2), "--stack", "mean", "--out", str(tmp_path / "m"), "--n-boot", "50"]) == 0
    mean = mammolens.load_bundle(tmp_path / "m")
    assert mean.combiner == {"method": "mean"} and len(mean.members) == 2
    assert "ROC AUC" in capsys.readouterr().out
    assert main(["ensemble", str(r1), "--stack", "forest", "--out", str(tmp_path / "x")]) == 2
    assert "known: linear-svc, logreg, svc" in capsys.readouterr().err
    r3 = tmp_path / "r3"
    save_mean_ensemble(r3 / "ensemble", [make_bundle(r3 / "fold0" / "bundle", 2, task="normal-abnormal",
                                                         classes=["normal", "abnormal"])], 0.5, 1.0)
    (r3 / "predictions.csv").write_bytes((r1 / "predictions.csv").read_bytes())
    assert main(["ensemble", str(r1), str(r3), "--stack", "logreg", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "disagree on task" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_the_stacker_folds_count_patient_groups_not_rows(tmp_path, oof, capsys):
    """Many rows of the rarer class from few women: the stacker's folds follow the women (one line when too few)."""
    y, groups, a, b = oof
    y = np.zeros_like(y)
    y[groups == "w00"], y[groups == "w01"] = 1, 1  # class 1: 4 rows, 2 women
    runs = [fake_run(tmp_path / "r1", 0, y, groups, a, temperature=1.3), fake_run(tmp_path / "r2", 1, y, groups, b)]
    assert main(["ensemble", *map(str, runs), "--stack", "logreg", "--out", str(tmp_path / "s"), "--n-boot", "0"]) == 0
    y[groups == "w01"] = 0  # class 1: one woman
    runs = [fake_run(tmp_path / "r1", 0, y, groups, a), fake_run(tmp_path / "r2", 1, y, groups, b)]
    capsys.readouterr()
    assert main(["ensemble", *map(str, runs), "--stack", "logreg", "--out", str(tmp_path / "t"), "--n-boot", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class 1 has 1" in err[0]
