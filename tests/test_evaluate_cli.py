"""`mammolens evaluate` end to end on films the bundle never saw, and its one-line refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mammolens.cli import main
from mammolens.data.synthetic import generate

TINY = {
    "name": "tiny",
    "data": {"source": "synthetic", "task": "benign-malignant",
             "synthetic": {"n_per_class": 8, "size": 64, "seed": 1}, "split": {"val": 0.25, "test": 0.25}},
    "image_size": 32,
    "model": {"name": "scratch-cnn", "options": {"depth": 2, "width": 4}},
    "train": {"epochs": 1, "batch_size": 8, "patience": 0, "progress": False},
    "workers": 1,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate-cli")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY, cache_dir=str(root / "cache"))))
    assert main(["train", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run" / "bundle", root


def _evaluate(bundle, source, out, cache, *extra) -> int:
    return main(["evaluate", str(bundle), str(source), "--out", str(out), "--n-boot", "100", "--workers", "1",
                 "--cache-dir", str(cache), *extra])


def test_evaluate_scores_every_sample_of_an_unseen_folder(trained, tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    from mammolens.bundle import load_model_bundle
    from mammolens.data.adapters.base import load_source
    from mammolens.preprocess import PreprocessCache

    bundle_dir, root = trained
    unseen = generate(tmp_path / "unseen", n_per_class=6, size=64, seed=7)  # another seed: other films
    out = tmp_path / "eval"
    assert _evaluate(bundle_dir, unseen, out, root / "cache") == 0
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and "patient groups" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv", dtype={"sample_id": str, "group": str})
    manifest = load_source(unseen).manifest
    lesions = manifest.df[manifest.df["pathology"].isin(["benign", "malignant"])]
    assert sorted(preds["sample_id"]) == sorted(lesions["sample_id"])  # every labelled sample, no split
    assert metrics["n_samples"] == len(lesions) == 12 and metrics["class_counts"] == {"benign": 6, "malignant": 6}
    assert list(preds.columns) == ["sample_id", "group", "label", "label_index", "p_benign", "p_malignant", "decision",
                                   "exam_id", "laterality", "view"]
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(preds["label_index"], preds["p_malignant"]), abs=1e-5)
    # The probabilities are the bundle's on the bundle's own preprocessing of these films.
    bundle = load_model_bundle(bundle_dir)
    cache = PreprocessCache(root / "cache" / "preprocessed", bundle.preprocess)
    proba = bundle.predict_proba(np.stack([cache.load(s) for s in preds["sample_id"]]))
    assert np.allclose(proba[:, 1], preds["p_malignant"], atol=1e-5)
    assert (preds["decision"] == np.where(proba[:, 1] >= bundle.threshold, "malignant", "benign")).all()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Worst false" in html and "mammolens evaluate" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained: nothing fetched


def test_a_single_class_source_reports_an_undefined_auc(trained, tmp_path, capsys):
    bundle_dir, root = trained
    benign_only = generate(tmp_path / "benign", n_per_class=4, size=64, seed=9, classes=("benign",))
    assert _evaluate(bundle_dir, benign_only, tmp_path / "eval", root / "cache") == 0
    printed = capsys.readouterr().out
    assert "undefined (only benign present)" in printed and not re.search(r"\bnan\b", printed, re.I)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["auc"]["value"] is None and metrics["at_threshold"]["specificity"] is not None


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _copy(bundle_dir: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle_dir, to))


@pytest.mark.parametrize("damage, message", [
    ("missing", "bundle not found"),
    ("bad-json", "not valid JSON"),
    ("checksum", "checksum does not match"),
    ("classes", "do not match task"),
    ("task", "do not match task"),
    ("unlabelled", "needs"),
    ("ensemble-tasks", "disagree on task"),
])  # fmt: skip
def test_bad_inputs_fail_with_one_line_and_write_nothing(trained, tmp_path, capsys, damage, message):
    from mammolens.bundle import save_mean_ensemble

    bundle_dir, root = trained
    source = generate(tmp_path / "data", n_per_class=2, size=64, seed=5)
    bundle, extra = tmp_path / "b", []
    if damage != "missing":
        _copy(bundle_dir, bundle)
    if damage == "bad-json":
        (bundle / "bundle.json").write_text("{not json")
    elif damage == "checksum":
        weights = bundle / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "classes":
        _edit(bundle / "bundle.json", classes=["normal", "cancer"])
    elif damage == "task":
        extra = ["--task", "normal-abnormal"]
    elif damage == "unlabelled":
        source = generate(tmp_path / "normals", n_per_class=2, size=64, seed=5, classes=("normal",))
    elif damage == "ensemble-tasks":
        other = _copy(bundle_dir, tmp_path / "other")
        bundle = save_mean_ensemble(tmp_path / "ens", [bundle_dir, other], threshold=0.5, temperature=1.0)
        member = bundle / "members" / "1" / "bundle.json"
        _edit(member, task="normal-abnormal", classes=["normal", "abnormal"])
        import hashlib

        _edit(bundle / "bundle.json", member_sha256=[json.loads((bundle / "bundle.json").read_text())["member_sha256"][0],
                                                     hashlib.sha256(member.read_bytes()).hexdigest()])
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("earlier")
    assert _evaluate(bundle, source, out, root / "cache", "--fresh", *extra) == 2  # --fresh acts only on success
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("mammolens: error:")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"] and (out / "metrics.json").read_text() == "earlier"


def test_an_ensemble_bundle_is_evaluated_like_any_bundle(trained, tmp_path):
    from mammolens.bundle import save_mean_ensemble

    bundle_dir, root = trained
    unseen = generate(tmp_path / "unseen", n_per_class=3, size=64, seed=11)
    ensemble = save_mean_ensemble(tmp_path / "ens", [bundle_dir, _copy(bundle_dir, tmp_path / "copy")],
                                  threshold=0.4, temperature=1.0)
    assert _evaluate(bundle_dir, unseen, tmp_path / "single", root / "cache") == 0
    assert _evaluate(ensemble, unseen, tmp_path / "mean", root / "cache") == 0
    single = pd.read_csv(tmp_path / "single" / "predictions.csv")
    mean = pd.read_csv(tmp_path / "mean" / "predictions.csv")
    assert np.allclose(single["p_malignant"], mean["p_malignant"], atol=1e-6)  # the mean of two equal models
    assert json.loads((tmp_path / "mean" / "metrics.json").read_text())["threshold"] == 0.4


def _mias_folder(root: Path, seed: int) -> Path:
    """A folder laid out like mini-MIAS (Info.txt + mdbNNN.pgm), holding films the bundle never saw."""
    from mammolens.data.synthetic import generate_array

    rng = np.random.default_rng(seed)
    root.mkdir()
    rows = []
    for i, pathology in enumerate(["benign", "malignant", "benign", "malignant", "benign", "malignant", "normal", "normal"]):
        ref = f"mdb{i + 1:03d}"
        image, rois = generate_array(rng, 128, pathology)
        pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
        (root / f"{ref}.pgm").write_bytes(b"P5\n128 128\n255\n" + pixels.tobytes())
        if pathology == "normal":
            rows.append(f"{ref} G NORM ")
        else:
            x, y, r = rois[0]
            rows.append(f"{ref} G CIRC {'B' if pathology == 'benign' else 'M'} {int(x)} {127 - int(y)} {max(int(r), 2)}")
    (root / "Info.txt").write_text("MIAS\n=====\n\n" + "\n".join(rows) + "\n\n=====\n")
    return root


def test_evaluate_a_mias_layout_folder_of_other_films(trained, tmp_path, capsys):
    bundle_dir, root = trained
    folder = _mias_folder(tmp_path / "mias", seed=21)
    assert _evaluate(bundle_dir, folder, tmp_path / "eval", root / "cache", "--kind", "mias") == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["class_counts"] == {"benign": 3, "malignant": 3} and metrics["n_groups"] == 3  # film pairs
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert sorted(preds["sample_id"]) == [f"mias-mdb00{i}-f1" for i in range(1, 7)]  # one sample per finding


def test_held_out_patients_are_set_aside_by_train_and_scored_alone_by_evaluate(tmp_path, capsys):
    films = generate(tmp_path / "films", n_per_class=8, size=64, seed=3)
    split = tmp_path / "holdout.json"
    assert main(["data", "split", str(films), "--task", "benign-malignant", "--val", "0", "--test", "0.25",
                 "--out", str(split)]) == 0
    held_out = set(json.loads(split.read_text())["parts"]["test"])
    cfg = tmp_path / "tiny.yaml"
    data = dict(TINY["data"], source=str(films), holdout=str(split))
    cfg.write_text(yaml.safe_dump(dict(TINY, data=data, cache_dir=str(tmp_path / "cache"))))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    trained_on = set(pd.read_csv(tmp_path / "run" / "manifest.csv", dtype=str)["sample_id"])
    assert held_out and not trained_on & held_out and len(trained_on) + len(held_out) == 16
    out = tmp_path / "eval"
    assert _evaluate(tmp_path / "run" / "bundle", films, out, tmp_path / "cache", "--split", str(split)) == 0
    preds = pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})
    assert set(preds["sample_id"]) == held_out
    assert json.loads((out / "metrics.json").read_text())["split"] == {"file": str(split), "part": "test"}
    capsys.readouterr()
    assert _evaluate(tmp_path / "run" / "bundle", films, tmp_path / "eval2", tmp_path / "cache", "--split", str(split),
                     "--part", "holdout") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown split part 'holdout'" in err[0] and not (tmp_path / "eval2").exists()
