"""The small-data lesion head (issue 14): logistic regression folded into the model, descriptors in
the bundle, test-time augmentation, (C, H, W) inputs, and one end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mammolens.bundle import load_model_bundle, save_bundle
from mammolens.bundle.model import Bundle, dihedral_views
from mammolens.train import ArrayDataModule, TrainConfig, fit
from mammolens.train.linear_head import fit_linear_head, install_linear_head
from mammolens.train.losses import probabilities
from mammolens.train.normalisation import normalise
from mammolens.train.tiny import TinyCNN
from mammolens.utils.configuration import from_dict
from mammolens.utils.errors import ConfigError, DataError


def _cfg(**kw):
    base = {"batch_size": 4, "accelerator": "cpu", "progress": False, "transfer": "frozen",
            "feature_fast_path": True, "head": "logistic", "class_weights": "balanced"}
    return from_dict(TrainConfig, base | kw, "train")


def _data(n=32, size=16, channels=None):
    rng = np.random.default_rng(3)
    labels = np.arange(n) % 2
    shape = (size, size) if channels is None else (channels, size, size)
    arrays = {}
    for i, c in enumerate(labels):
        image = rng.random(shape, dtype=np.float32) * 0.5
        image[..., 4:12, 4:12] += 0.4 * c * rng.random()
        arrays[f"s{i:02d}"] = image
    return arrays, list(arrays), labels


def test_logistic_head_is_the_fitted_regression_inside_the_model(tmp_path):
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    arrays, ids, labels = _data()
    cfg = _cfg(logistic_c=[0.01, 1.0])
    parts = {"train": range(24), "val": range(24, 32)}
    dm = ArrayDataModule.from_config(arrays.__getitem__, ids, labels, parts, cfg, sample_keys=ids)
    model = TinyCNN()
    backbone = {k: v.clone() for k, v in model.block1.state_dict().items()}
    result = fit(model, dm, cfg, tmp_path / "run", feature_cache_dir=tmp_path / "features",
                 groups=[i // 2 for i in range(32)])
    assert result.descriptor_head is None and result.history == []
    record = json.loads((tmp_path / "run" / "linear_head.json").read_text())
    assert set(record["inner_cv_scores"]) == {"0.01", "1.0"}
    for k, v in result.model.block1.state_dict().items():
        assert torch.equal(v, backbone[k])  # frozen: only the head changed
    x = torch.from_numpy(np.stack([arrays[i] for i in ids]))[:, None]
    x = normalise(x, dm.normalisation)
    with torch.no_grad():
        feats = result.model.forward_features(x).numpy().astype(np.float64)
        got = probabilities(result.model(x)).numpy()[:, 1]
    train = feats[:24]
    mean, scale = train.mean(0), np.where(train.std(0) > 1e-12, train.std(0), 1.0)
    ref = LogisticRegression(C=record["C"], class_weight="balanced", max_iter=5000).fit((train - mean) / scale, labels[:24])
    np.testing.assert_allclose(got, ref.predict_proba((feats - mean) / scale)[:, 1], atol=1e-4)


def test_descriptor_head_travels_in_the_bundle(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    desc = np.stack([y + rng.normal(0, 0.7, 40), rng.normal(5, 2, 40)], axis=1)
    model = TinyCNN()
    head = fit_linear_head(desc, y, None, cs=[1.0], balanced=False, outputs=2)
    extra = install_linear_head(model, head, 0)  # descriptors only: the image part is zero
    extra["names"] = ["a", "b"]
    path = save_bundle(tmp_path / "b", model, classes=["benign", "malignant"], task="benign-malignant",
                       preprocess={"steps": []}, normalisation={"mean": 0.5, "std": 0.25}, metrics={},
                       provenance={}, config={}, tta=8, descriptor_head=extra)
    bundle = load_model_bundle(path, model_factory=lambda **kw: TinyCNN(**{k: v for k, v in kw.items() if k != "pretrained"}))
    assert bundle.tta == 8 and bundle.descriptor_head["names"] == ["a", "b"]
    images = rng.random((40, 16, 16)).astype(np.float32)
    got = bundle.predict_proba(images, descriptors=desc)[:, 1]
    mean, scale = desc.mean(0), desc.std(0)
    ref = LogisticRegression(C=1.0, max_iter=5000).fit((desc - mean) / scale, y).predict_proba((desc - mean) / scale)[:, 1]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    with pytest.raises(DataError, match="needs lesion descriptors"):
        bundle.predict_proba(images)
    with pytest.raises(DataError, match="expected shape"):
        bundle.predict_proba(images, descriptors=desc[:, :1])
    # A cv ensemble of such bundles hands the descriptors on to its members.
    from mammolens.bundle import EnsembleBundle

    ensemble = EnsembleBundle(path=tmp_path, members=[bundle, bundle], classes=bundle.classes, task=bundle.task,
                              threshold=0.5, temperature=1.0, combiner={"method": "mean"}, metrics={}, provenance={})
    np.testing.assert_allclose(ensemble.predict_proba(images, descriptors=desc)[:, 1], got, atol=1e-6)


def test_tta_averages_the_eight_flips_and_rotations():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    views = list(dihedral_views(x, 8))
    assert len({tuple(v[0, 0].flatten().tolist()) for v in views}) == 8
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    dihedral = {tuple(t[0, 0].flatten().tolist()) for t in turns + [t.flip(-1) for t in turns]}
    assert {tuple(v[0, 0].flatten().tolist()) for v in views} == dihedral  # the 4 quarter turns, each mirrored
    torch.manual_seed(0)
    model = TinyCNN().eval()
    bundle = Bundle(path=Path("."), model=model, classes=["a", "b"], task="t", preprocess={},
                    normalisation={"mean": 0.0, "std": 1.0}, threshold=0.5, temperature=1.0, metrics={},
                    provenance={}, config={}, tta=8)
    images = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = torch.stack([probabilities(model(v)) for v in dihedral_views(torch.from_numpy(images)[:, None], 8)])
    np.testing.assert_allclose(bundle.predict_proba(images), expected.mean(0).numpy(), atol=1e-6)
    bundle.tta = 1
    assert not np.allclose(bundle.predict_proba(images), expected.mean(0).numpy(), atol=1e-6)


def test_channels_reach_the_model_and_the_bundle():
    arrays, ids, labels = _data(channels=3)
    cfg = _cfg()
    dm = ArrayDataModule.from_config(arrays.__getitem__, ids, labels, {"train": range(24), "val": range(24, 32)}, cfg)
    assert dm.in_chans == 3
    x, _ = dm.dataset("train")[0]
    assert tuple(x.shape) == (3, 16, 16)
    bundle = Bundle(path=Path("."), model=TinyCNN(), classes=["a", "b"], task="t", preprocess={},
                    normalisation={"mean": 0.0, "std": 1.0}, threshold=0.5, temperature=1.0, metrics={},
                    provenance={}, config={})
    assert tuple(bundle.to_input(np.zeros((2, 3, 16, 16), np.float32)).shape) == (2, 3, 16, 16)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        bundle.to_input(np.zeros((16, 16), np.float32))


@pytest.mark.parametrize("settings, message", [
    ({"head": "logistic", "feature_fast_path": False}, "feature_fast_path"),
    ({"head": "mlp", "head_inputs": "both"}, "need head: logistic"),
    ({"tta": 4}, "1 or 8"),
    ({"logistic_c": [0.0]}, "positive"),
])
def test_bad_head_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**settings)


def test_a_lesion_experiment_end_to_end(tmp_path):
    """Multi-scale crops + descriptors + logistic head + TTA through run_experiment: the bundle it saves
    scores the held-out part exactly as the run did."""
    from mammolens.engine.config import load_config, preprocess_config
    from mammolens.engine.experiment import run_experiment
    from mammolens.evaluate.metrics import roc_auc
    from mammolens.preprocess import PreprocessCache

    config = {
        "name": "tiny-lesion",
        "data": {"source": "synthetic", "task": "benign-malignant",
                 "synthetic": {"n_per_class": 10, "size": 64, "seed": 1, "calc_fraction": 0.0}},
        "preprocess": {"steps": [{"name": "lesion_descriptors", "pixel_mm": 0.2},
                                 {"name": "multiscale_crop", "scales": [1, 2, 4], "size": 16, "min_size": 4}]},
        "model": {"name": "scratch-cnn", "options": {"depth": 1, "width": 4, "hidden": 0}},
        "train": {"transfer": "frozen", "feature_fast_path": True, "head": "logistic", "head_inputs": "both",
                  "tta": 8, "accelerator": "cpu", "progress": False, "logistic_c": [0.1, 1.0]},
        "workers": 1, "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    bundle = load_model_bundle(summary["bundle"])
    assert bundle.model.config["in_chans"] == 3 and bundle.tta == 8
    names = bundle.descriptor_head["names"]
    assert names[0] == "radius_mm" and len(names) == len(bundle.descriptor_head["coef"][0])
    cache = PreprocessCache(tmp_path / "cache" / "preprocessed", preprocess_config(cfg))
    manifest = pd.read_csv(tmp_path / "run" / "manifest.csv")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    test_ids = split["parts"]["test"]
    proba = bundle.predict_proba(np.stack([cache.load(s) for s in test_ids]),
                                 descriptors=np.stack([cache.load_descriptors(s) for s in test_ids]))
    y = manifest.set_index("sample_id").loc[test_ids, "pathology"].eq("malignant").to_numpy()
    assert roc_auc(y.astype(int), proba) == pytest.approx(summary["metrics"]["test"]["auc"])
    from mammolens.data.manifest import Manifest
    from mammolens.evaluate.predict import predict_manifest

    saved = Manifest.load(tmp_path / "run" / "manifest.csv")
    rows = [int(np.flatnonzero(saved.df["sample_id"] == s)[0]) for s in test_ids]
    np.testing.assert_allclose(predict_manifest(bundle, saved.subset(rows), tmp_path / "cache", workers=1,
                                                progress=False), proba, atol=1e-6)  # `mammolens evaluate`'s path
