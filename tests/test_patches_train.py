"""Training a patch-classifier through ``mammolens cv``: patches only from the training part's films,
and the fold bundle scores its held-out films exactly as the trainer's cached fast path did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mammolens.cli import main

TINY = {
    "name": "tiny-patches",
    "data": {"source": "synthetic", "task": "normal-benign-malignant",
             "synthetic": {"n_per_class": 10, "size": 64, "seed": 1, "calc_fraction": 0.0}},
    "preprocess": {"steps": [{"name": "orient"}, {"name": "crop_breast"}, {"name": "resize", "size": 32}]},
    "model": {"name": "patch-classifier",
              "options": {"backbone": "tiny", "patch_size": 16, "stride": 8, "aggregate": "auto",
                          "training": {"c_values": [0.1, 1.0], "negatives_per_film": 3, "positives_per_finding": 2,
                                       "hard_negatives_per_film": 1}}},
    "workers": 1,
}


def _config(tmp_path: Path, **changes) -> Path:
    data = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(dict(data, cache_dir=str(tmp_path / "cache"))))
    return path


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("patches-cv")
    out = tmp / "cv"
    assert main(["cv", str(_config(tmp)), "--folds", "2", "--out", str(out), "--n-boot", "20"]) == 0
    return out


def test_patches_and_their_labels_stay_in_the_training_part(tmp_path: Path) -> None:
    from mammolens.engine.config import preprocess_config
    from mammolens.engine.crossval import fold_parts
    from mammolens.engine.config import load_config
    from mammolens.engine.patch_trainer import patch_model, training_patches
    from mammolens.engine.sources import task_samples
    from mammolens.patches.features import PatchFeatureStore
    from mammolens.preprocess import PreprocessCache

    cfg = load_config(_config(tmp_path))
    manifest, labels, task = task_samples(cfg, progress=False)
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", preprocess_config(cfg))
    cache.build(manifest, workers=1, progress=False)
    model = patch_model(cfg, task)
    store = PatchFeatureStore(tmp_path / "features", model)
    groups = manifest.df["group"].to_numpy()
    for parts in fold_parts(manifest, labels, folds=2, seed=0, inner_val=0.25, task=task.name):
        patches = training_patches(model, store, cache, manifest, labels, task, parts["train"], progress=False)
        assert set(patches.films.tolist()) <= set(parts["train"].tolist())
        held = set(groups[parts["val"]]) | set(groups[parts["test"]])
        assert not set(groups[patches.films]) & held  # no patch of a validation or held-out woman
        for film in np.unique(patches.films):
            own = patches.labels[patches.films == film]
            # a film's patches are normal tissue or its own finding's label, never another film's
            assert set(own.tolist()) <= {0, int(labels[film])}
            if labels[film] == 0:
                assert (own == 0).all()
        assert (patches.labels != 0).any() and (patches.labels == 0).any()


def test_cv_trains_scores_and_the_bundle_reproduces_the_out_of_fold_scores(cv_run: Path) -> None:
    from mammolens.bundle.model import load_model_bundle
    from mammolens.engine.config import preprocess_config
    from mammolens.engine.config import load_config
    from mammolens.evaluate.predictions import proba_of, read_predictions
    from mammolens.preprocess import PreprocessCache

    metrics = json.loads((cv_run / "metrics.json").read_text())
    assert metrics["macro_f1"] is not None and len(metrics["folds"]) == 2
    fold = cv_run / "repeat0" / "fold0"
    selection = json.loads((fold / "training" / "selection.json").read_text())
    assert {row["aggregate"] for row in selection["table"]} == {"max", "topk", "stage2"}
    assert len(selection["table"]) == 6 and selection["patches"]["positive"] > 0
    bundle = load_model_bundle(fold / "bundle")
    assert bundle.model.config["aggregate"] == selection["chosen"]["aggregate"]
    assert bundle.model.config["name"] == "patch-classifier"
    df, classes = read_predictions(fold / "oof.csv")
    cfg = load_config(cv_run.parent / "tiny.yaml")
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", preprocess_config(cfg))
    films = np.stack([cache.load(s) for s in df["sample_id"]])
    np.testing.assert_allclose(bundle.predict_proba(films), proba_of(df, classes), rtol=1e-4, atol=1e-5)
    assert (cv_run / "ensemble" / "bundle.json").is_file()


def test_a_patch_larger_than_the_preprocessed_film_is_one_line(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, **{"model.options.patch_size": 48})
    assert main(["cv", str(path), "--folds", "2", "--out", str(tmp_path / "cv"), "--n-boot", "20"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(
        "model.options.patch_size: 48 is larger than the preprocessed film (32x32); use a smaller patch or a larger resize")


def test_a_stride_of_zero_is_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, **{"model.options.stride": 0})
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(
        "model.options.stride: must be an integer >= 1 pixel (a stride of 0 never moves), got 0")
    assert not (tmp_path / "cache" / "preprocessed").exists()  # refused before preprocessing


def test_contact_sheet_of_held_out_maps(cv_run: Path, tmp_path: Path) -> None:
    from mammolens.engine.patch_sheet import make_sheet

    out = make_sheet(cv_run, tmp_path / "sheet.png", abnormal=2, normal=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage2_learns_from_out_of_fold_maps() -> None:
    """Each training film's map summary comes from a patch head that never saw its woman's patches:
    changing a film's own patch labels leaves its summary as it was; the model's head is restored."""
    import torch

    from mammolens.models import create_model
    from mammolens.engine.patch_trainer import PatchSet, stage2_inputs

    torch.manual_seed(0)
    model = create_model("patch-classifier", 2, backbone="tiny", patch_size=16, stride=8, aggregate="max").eval()
    d = model.encoder.num_features
    rng = np.random.default_rng(0)
    rows, groups = np.arange(6), np.array(["a", "a", "b", "c", "d", "e"])
    windows = {int(i): rng.normal(size=(4, d)).astype(np.float32) for i in rows}  # 2x2 windows per film

    def summaries(idx: np.ndarray) -> torch.Tensor:
        feats = torch.from_numpy(np.concatenate([windows[int(i)] for i in idx]))
        with torch.inference_mode():
            return model.summarise(model.map_from_features(feats, torch.ones(len(idx), 4, dtype=torch.bool), (2, 2)))

    films = np.repeat(rows, 4)
    labels = rng.integers(0, 2, len(films))
    patches = PatchSet(np.concatenate([windows[int(i)] for i in rows]), labels, films, np.zeros((24, 2)), 0)
    head = {k: v.clone() for k, v in model.patch_head.state_dict().items()}
    first = stage2_inputs(model, patches, rows, groups, summaries, 2, 1.0, None, 0)
    assert all(torch.equal(v, model.patch_head.state_dict()[k]) for k, v in head.items())
    flipped = PatchSet(patches.features, np.where(films == 3, 1 - labels, labels), films, patches.positions, 0)
    second = stage2_inputs(model, flipped, rows, groups, summaries, 2, 1.0, None, 0)
    np.testing.assert_allclose(second[3], first[3])  # film 3's summary never saw its own patches
    assert not np.allclose(np.delete(second, 3, 0), np.delete(first, 3, 0))  # others were fitted on them
