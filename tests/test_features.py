import copy

import numpy as np
import pytest
import torch

import mammolens.train.features as features
from mammolens.train import ArrayDataModule, TrainConfig, fit
from mammolens.train.features import feature_cache_key, part_features
from mammolens.train.tiny import TinyCNN
from mammolens.utils.configuration import from_dict

PARTS = {"train": range(16), "val": range(16, 24)}


def _data(n=24, size=32):
    rng = np.random.default_rng(1)
    labels = np.arange(n) % 2
    arrays = {}
    for i, c in enumerate(labels):
        image = rng.random((size, size), dtype=np.float32) * 0.4
        image[12:20, 12:20] += 0.5 * c
        arrays[f"s{i:02d}"] = image
    return arrays, list(arrays), labels


def _setup(data_key=None, **kw):
    cfg = from_dict(
        TrainConfig,
        {"epochs": 2, "batch_size": 4, "lr": 0.05, "accelerator": "cpu", "progress": False, "patience": 0} | kw,
        "train",
    )
    arrays, ids, labels = _data()
    return cfg, ArrayDataModule.from_config(arrays.__getitem__, ids, labels, PARTS, cfg, data_key=data_key)


def test_fast_path_trains_the_same_head_as_the_frozen_network(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN(dropout=0.3)  # dropout in the head: the random stream must match too
    initial = copy.deepcopy(model)
    cfg, dm = _setup(transfer="frozen")
    slow = fit(copy.deepcopy(model), dm, cfg, tmp_path / "slow")
    cfg_fast, dm_fast = _setup(transfer="frozen", feature_fast_path=True, data_key="v1")
    fast = fit(copy.deepcopy(model), dm_fast, cfg_fast, tmp_path / "fast")

    assert [r["epoch"] for r in fast.history] == [1, 2]
    for a, b in zip(slow.history, fast.history, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    for name, p in fast.model.head.named_parameters():
        assert not torch.equal(p, dict(initial.head.named_parameters())[name])  # it did train
        torch.testing.assert_close(p, dict(slow.model.head.named_parameters())[name], rtol=1e-5, atol=1e-6)
    for name, t in fast.model.block1.state_dict().items():
        assert torch.equal(t, initial.block1.state_dict()[name])
    assert len(list((tmp_path / "fast" / "feature_cache").glob("*.npy"))) == 2


def test_cache_is_reused_and_keyed_by_what_the_features_depend_on(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TinyCNN()
    _, dm = _setup(data_key="content-1")
    first = part_features(model, dm, "train", device=torch.device("cpu"), cache_dir=tmp_path)
    assert first.shape == (16, 8)

    calls = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a: calls.append(a) or real(*a))
    again = part_features(model, dm, "train", device=torch.device("cpu"), cache_dir=tmp_path)
    assert np.array_equal(first, again) and not calls

    ids = [dm.sample_ids[r] for r in dm.rows("train")]
    key = feature_cache_key(model, ids, dm.normalisation, "content-1")
    assert feature_cache_key(model, ids, dm.normalisation, "content-2") != key
    assert feature_cache_key(model, ids[:-1], dm.normalisation, "content-1") != key
    assert feature_cache_key(model, ids, {"mean": 0.5, "std": 0.25}, "content-1") != key
    with torch.no_grad():
        model.head[1].weight.add_(1.0)
    assert feature_cache_key(model, ids, dm.normalisation, "content-1") == key  # the head does not matter
    with torch.no_grad():
        model.block1[0].weight.add_(1.0)
    assert feature_cache_key(model, ids, dm.normalisation, "content-1") != key

    _, unkeyed = _setup(data_key=None)
    part_features(model, unkeyed, "val", device=torch.device("cpu"), cache_dir=tmp_path / "none")
    assert not (tmp_path / "none").exists()  # content not vouched for: nothing cached


def test_corrupt_cache_file_is_recomputed(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN()
    _, dm = _setup(data_key="k")
    first = part_features(model, dm, "val", device=torch.device("cpu"), cache_dir=tmp_path)
    (path,) = tmp_path.glob("val-*.npy")
    path.write_bytes(b"not an npy file")
    assert np.array_equal(part_features(model, dm, "val", device=torch.device("cpu"), cache_dir=tmp_path), first)


def test_per_sample_feature_cache_is_shared_across_folds(tmp_path, monkeypatch):
    """Another assignment of the same samples to parts (a cv fold) reuses every sample's features;
    a changed sample key (other pixels) is computed again."""
    torch.manual_seed(0)
    model = TinyCNN()
    arrays, ids, labels = _data()
    cfg = from_dict(TrainConfig, {"batch_size": 4, "accelerator": "cpu", "progress": False}, "train")
    keys = [f"k{i}" for i in range(len(ids))]
    calls = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda m, dm, part, *a: calls.append(len(dm.rows(part))) or real(m, dm, part, *a))
    first = ArrayDataModule.from_config(arrays.__getitem__, ids, labels, PARTS, cfg, sample_keys=keys)
    a = part_features(model, first, "train", device=torch.device("cpu"), cache_dir=tmp_path)
    fold = {"train": range(8, 24), "val": range(8)}
    other = ArrayDataModule.from_config(arrays.__getitem__, ids, labels, fold, cfg, sample_keys=keys)
    b = part_features(model, other, "val", device=torch.device("cpu"), cache_dir=tmp_path)
    np.testing.assert_array_equal(b, a[:8])
    np.testing.assert_allclose(a, real(model, first, "train", torch.device("cpu")), atol=1e-6)
    changed = ArrayDataModule.from_config(arrays.__getitem__, ids, labels, fold, cfg, sample_keys=["new"] + keys[1:])
    part_features(model, changed, "val", device=torch.device("cpu"), cache_dir=tmp_path)
    assert calls == [16, 1]  # first fold: all 16; second fold: nothing; changed sample: that one
