"""``mammolens cv``: folds by patient, inner validation without held-out patients, pooled
out-of-fold metrics, an ensemble bundle, resumption, and thresholds that never see held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mammolens.cli import main

TINY = {
    "name": "tiny-cv",
    "data": {"source": "synthetic", "task": "benign-malignant",
             "synthetic": {"n_per_class": 16, "size": 64, "seed": 2, "calc_fraction": 0.0}},
    "image_size": 32,
    "roi_crop": True,
    "model": {"name": "scratch-cnn", "options": {"depth": 2, "width": 4}},
    "train": {"epochs": 2, "batch_size": 8, "patience": 0, "progress": False},
    "workers": 1,
}


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, cache_dir=str(tmp_path / "cache"))))
    return path


def test_inner_validation_never_holds_a_held_out_patient():
    from mammolens.data.manifest import Manifest
    from mammolens.engine.crossval import fold_parts

    rng = np.random.default_rng(0)
    records = [{"sample_id": f"s{i}", "source": "arrays", "path": f"/x/{i}.png", "group": f"g{i // 3}",
                "pathology": "benign" if (i // 3) % 2 else "malignant"} for i in range(60)]
    manifest = Manifest.from_records(records)
    labels = np.array([(i // 3) % 2 for i in range(60)])
    folds = fold_parts(manifest, labels, folds=4, seed=int(rng.integers(100)), inner_val=0.25, task="t")
    group = manifest.df["group"].to_numpy()
    tests = set()
    for parts in folds:
        held = set(group[parts["test"]])
        assert not held & set(group[parts["val"]]) and not held & set(group[parts["train"]])
        assert not set(group[parts["val"]]) & set(group[parts["train"]])
        assert len(parts["val"]) and len(parts["train"])
        tests |= set(parts["test"].tolist())
    assert tests == set(range(60))  # every sample is held out exactly once


def test_cv_writes_pooled_oof_metrics_an_ensemble_and_resumes(tiny_config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cv"
    assert main(["cv", str(tiny_config), "--folds", "3", "--out", str(out), "--n-boot", "50"]) == 0
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and "ensemble bundle" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    preds = (out / "predictions.csv").read_text().splitlines()
    assert len(preds) - 1 == 32 and metrics["n_samples"] == 32  # every sample once, out of fold
    assert [row["fold"] for row in metrics["folds"]] == [0, 1, 2]
    assert (out / "report.html").stat().st_size > 10_000
    bundle = json.loads((out / "ensemble" / "bundle.json").read_text())
    assert bundle["kind"] == "ensemble" and len(bundle["members"]) == 3
    # The ensemble is a bundle `evaluate` accepts, here on synthetic films it never saw.
    from mammolens.data.synthetic import generate

    unseen = generate(tmp_path / "unseen", n_per_class=4, size=64, seed=11, calc_fraction=0.0)
    assert main(["evaluate", str(out / "ensemble"), str(unseen), "--out", str(tmp_path / "ev"),
                 "--cache-dir", str(tmp_path / "cache"), "--n-boot", "50"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_samples"] == 8
    # A finished fold is never trained again: re-running only re-pools.
    stamp = (out / "repeat0" / "fold1" / "oof.csv").stat().st_mtime_ns
    (out / "repeat0" / "fold2" / "oof.csv").unlink()  # as if interrupted during fold 2
    capsys.readouterr()
    assert main(["cv", str(tiny_config), "--folds", "3", "--out", str(out), "--n-boot", "50"]) == 2  # never silently
    assert "pass --resume to continue it, --fresh to replace it" in capsys.readouterr().err
    assert main(["cv", str(tiny_config), "--folds", "3", "--out", str(out), "--n-boot", "50", "--resume"]) == 0
    assert (out / "repeat0" / "fold1" / "oof.csv").stat().st_mtime_ns == stamp
    assert (out / "repeat0" / "fold2" / "oof.csv").is_file()
    # A second repeat (split seed + 1) trains only its own folds and reports mean ± sd over repeats.
    assert main(["cv", str(tiny_config), "--folds", "3", "--repeats", "2", "--out", str(out), "--n-boot", "50",
                 "--resume"]) == 0
    assert (out / "repeat0" / "fold1" / "oof.csv").stat().st_mtime_ns == stamp
    repeated = json.loads((out / "metrics.json").read_text())
    assert [r["repeat"] for r in repeated["repeats"]["per_repeat"]] == [0, 1]
    assert set(repeated["repeats"]["auc"]) == {"mean", "sd"}
    assert len((out / "predictions-all.csv").read_text().splitlines()) - 1 == 64
    # Continuing with other settings is refused.
    capsys.readouterr()
    assert main(["cv", str(tiny_config), "--folds", "4", "--out", str(out), "--resume"]) == 2
    assert "folds" in capsys.readouterr().err


def test_too_many_folds_for_the_patient_groups_is_one_line(tiny_config: Path, tmp_path: Path, capsys) -> None:
    assert main(["cv", str(tiny_config), "--folds", "40", "--out", str(tmp_path / "cv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mammolens: error: cannot make 40 folds")


def test_threshold_and_temperature_never_see_the_held_out_part(tiny_config: Path, tmp_path: Path) -> None:
    """Changing the test part's labels and images changes neither the temperature nor the threshold."""
    from mammolens.engine.config import load_config
    from mammolens.engine.sources import task_samples
    from mammolens.engine.trainers import train_on_parts

    cfg = load_config(tiny_config)
    manifest, labels, task = task_samples(cfg, progress=False)
    from mammolens.engine.crossval import fold_parts

    parts = fold_parts(manifest, labels, folds=3, seed=0, inner_val=0.3, task=task.name)[0]
    first = train_on_parts(cfg, manifest, labels, task, parts, tmp_path / "a", progress=False)
    flipped = labels.copy()
    flipped[parts["test"]] = 1 - flipped[parts["test"]]
    other = manifest.subset(list(range(len(manifest))))
    other.df.loc[parts["test"], "path"] = np.roll(other.df.loc[parts["test"], "path"].to_numpy(), 1)
    second = train_on_parts(cfg, other, flipped, task, parts, tmp_path / "b", progress=False)
    assert first.bundle.threshold == second.bundle.threshold
    assert first.bundle.temperature == second.bundle.temperature
    assert first.bundle.temperature != 1.0 or first.bundle.threshold != 0.5  # they were fitted at all
    assert first.metrics["test"] != second.metrics["test"]


def test_resume_refuses_a_finished_fold_whose_samples_are_now_cut_otherwise(tiny_config: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """A finished fold's out-of-fold rows are reused only if the recomputed fold holds the same samples."""
    from mammolens.engine import crossval
    from mammolens.utils.errors import ConfigError
    from mammolens.engine.config import load_config

    cfg, out = load_config(tiny_config), tmp_path / "cv"
    crossval.run_cv(cfg, out, folds=2, n_boot=0, progress=False)
    record = json.loads((out / "cv.json").read_text())
    assert [len(f["test"]) for f in record["membership"]["0"]] == [16, 16]
    from mammolens.data.fingerprints import fingerprints

    fold0 = json.loads((out / "repeat0" / "fold0" / "bundle" / "bundle.json").read_text())["provenance"]["fitted_on"]
    assert fold0["val"]["samples"] == fingerprints(record["membership"]["0"][0]["val"])  # each bundle knows its data
    assert not set(fold0["train"]["samples"]) & set(fingerprints(record["membership"]["0"][0]["test"]))
    (out / "repeat0" / "fold1" / "oof.csv").unlink()  # interrupted during fold 1
    real = crossval.make_kfold
    monkeypatch.setattr(crossval, "make_kfold", lambda *a, seed, **kw: real(*a, seed=seed + 7, **kw))  # another splitter
    with pytest.raises(ConfigError, match="repeat 0 fold 0: its test part would now hold other samples"):
        crossval.run_cv(cfg, out, folds=2, n_boot=0, progress=False, resume=True)


def test_the_ensembles_operating_point_is_fitted_on_its_own_output(tiny_config: Path, tmp_path: Path) -> None:
    """--ensemble-part: women set aside before the folds, seen by no fold model; the ensemble's temperature and
    threshold are those fitted there on the mean of its members (each at its own temperature != 1)."""
    from mammolens.engine import crossval
    from mammolens.data.fingerprints import fingerprints
    from mammolens.engine.sources import task_samples
    from mammolens.bundle import load_bundle as load_any_bundle
    from mammolens.evaluate.predict import predict_manifest
    from mammolens.engine.trainers import choose_operating_point
    from mammolens.engine.config import load_config

    cfg, out = load_config(tiny_config), tmp_path / "cv"
    metrics = crossval.run_cv(cfg, out, folds=2, n_boot=0, progress=False, ensemble_part=0.25)
    record = json.loads((out / "cv.json").read_text())
    reserved = set(record["ensemble_part_samples"])
    assert 0 < len(reserved) < 32 and metrics["n_samples"] == 32 - len(reserved)
    for fold in record["membership"]["0"]:
        assert not reserved & set(fold["test"]) and not reserved & set(fold["val"])
    for i in range(2):
        fitted = json.loads((out / f"repeat0/fold{i}/bundle/bundle.json").read_text())["provenance"]["fitted_on"]
        assert not set(fitted["train"]["samples"]) & set(fingerprints(reserved))
    ensemble = load_any_bundle(out / "ensemble")
    assert any(m.temperature != 1.0 for m in ensemble.members)  # a failed fit ships T = 1 (clinic)
    manifest, labels, _ = task_samples(cfg, progress=False)
    rows = [i for i, s in enumerate(manifest.df["sample_id"]) if s in reserved]
    part = manifest.subset(rows)
    served = np.mean([predict_manifest(m, part, cfg.cache_dir, progress=False) for m in ensemble.members], axis=0)
    point = choose_operating_point(cfg.operating_point, labels[rows], served)
    assert (ensemble.temperature, ensemble.threshold) == pytest.approx((point.temperature, point.threshold))
    assert "set aside before the folds" in ensemble.provenance["operating_point_fitted_on"]
