"""The siamese bilateral model (issue 14): shared film model, fusion in the head, the paired feature
fast path equal to the images' own features, a bundle that predicts from (film, other film), and
one-line errors for a source without pairs when fallback is off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bilateral_fixtures import paired_source

from mammolens.bundle import load_model_bundle, save_bundle
from mammolens.cli import main
from mammolens.data.pairs import PairedLoader, pair_channels
from mammolens.models import create_model
from mammolens.train import ArrayDataModule
from mammolens.train.features import part_features
from mammolens.utils.errors import ConfigError

FILM = {"film_model": "scratch-cnn", "film_options": {"depth": 2, "width": 4}}


def _model(fusion: str = "diff", **kw):
    torch.manual_seed(0)
    return create_model("bilateral", 2, in_chans=2, fusion=fusion, hidden=0, **FILM, **kw).eval()


@pytest.mark.parametrize(("fusion", "width"), [("diff", 2), ("signed", 2), ("concat", 2), ("diff-concat", 3)])
def test_one_shared_film_model_reads_both_films_and_the_head_fuses_them(fusion, width):
    model = _model(fusion)
    d = model.num_film_features
    x = torch.rand(3, 2, 32, 32)
    x[2, 1] = x[2, 0]  # no partner: the film twice
    with torch.no_grad():
        features = model.forward_features(x)
        alone = model.film_model.forward_features(x[:, :1])
        other = model.film_model.forward_features(x[:, 1:])
    assert features.shape == (3, 2 * d + 1)
    torch.testing.assert_close(features[:, :d], alone)
    torch.testing.assert_close(features[:, d:2 * d], other)
    assert features[:, -1].tolist() == [1.0, 1.0, 0.0]  # the model knows which film has no partner
    assert model.head[-1].in_features == width * d + 1
    fused = model.fuse(features)
    if fusion in ("diff", "diff-concat"):
        torch.testing.assert_close(fused[:, -d - 1:-1], (alone - other).abs())
    if fusion == "signed":
        torch.testing.assert_close(fused[:, d:2 * d], alone - other)
    assert model(x).shape == (3, 2)


def test_bad_settings_are_one_line_each():
    with pytest.raises(ConfigError, match="set data.pairs.enabled: true"):
        create_model("bilateral", 2, in_chans=1, **FILM)
    with pytest.raises(ConfigError, match="fusion"):
        create_model("bilateral", 2, in_chans=2, fusion="sum", **FILM)
    with pytest.raises(ConfigError, match="takes \\(B, 2, H, W\\)"):
        _model().forward_features(torch.rand(1, 1, 32, 32))


def test_paired_fast_path_features_equal_the_pairs_own_and_each_film_runs_once(tmp_path: Path):
    rng = np.random.default_rng(0)
    films = {f"f{i}": rng.random((32, 32)).astype(np.float32) for i in range(5)}
    partners = {"f0": "f1", "f1": "f0", "f2": "f3", "f3": "f2", "f4": "f4"}
    seen: list[str] = []

    def load(sid: str) -> np.ndarray:
        seen.append(sid)
        return films[sid]

    for mirror in (False, True):
        loader = PairedLoader(load, partners, film_keys={s: f"k{s}" for s in films}, mirror=mirror)
        ids = sorted(films)
        dm = ArrayDataModule(loader, ids, np.array([0, 1, 0, 1, 0]), {"train": [0, 1, 2], "val": [3, 4]}, 2,
                             sample_keys=loader.keys(ids))
        model = _model("diff-concat")
        cache = tmp_path / f"features-{mirror}"

        def fast(model=model, dm=dm, cache=cache) -> np.ndarray:  # noqa: ANN001 - this iteration's
            return np.concatenate([part_features(model, dm, p, device=torch.device("cpu"), cache_dir=cache)
                                   for p in ("train", "val")])

        first = fast()
        with torch.no_grad():
            slow = model.forward_features(torch.stack([dm.dataset("train")[i][0] for i in range(3)]
                                                      + [dm.dataset("val")[i][0] for i in range(2)])).numpy()
        np.testing.assert_allclose(first, slow, rtol=1e-5, atol=1e-6)
        assert first[:, -1].tolist() == [1, 1, 1, 1, 0]
        # One cached vector per film (and per mirrored partner), under the film model's own key.
        assert len(list(cache.rglob("*.npy"))) == len(films) + (4 if mirror else 0)
        seen.clear()
        np.testing.assert_array_equal(fast(), first)
        assert set(seen) <= {"f0", "f3", "f2"}  # only the single-film datamodules' shape checks read a film
        assert len(seen) == (4 if mirror else 2)


def test_a_bundle_predicts_from_a_film_and_its_other_film(tmp_path: Path):
    model = _model()
    path = save_bundle(tmp_path / "b", model, classes=["normal", "abnormal"], task="normal-abnormal",
                       preprocess={"steps": []}, normalisation=None, metrics={}, provenance={}, config={})
    bundle = load_model_bundle(path)
    assert bundle.model.config["in_chans"] == 2 and bundle.model.config["film_model"] == "scratch-cnn"
    film, other = np.random.default_rng(1).random((2, 32, 32)).astype(np.float32)
    batch = np.stack([pair_channels(film, other), pair_channels(film, None)])
    proba = bundle.predict_proba(batch)
    with torch.no_grad():
        expected = torch.softmax(model(bundle.to_input(batch)), 1).numpy()
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(proba[0], proba[1])  # the other film changes the answer
    feats = model.forward_features(bundle.to_input(batch)).detach().numpy()
    np.testing.assert_allclose(bundle.predict_proba_features(feats), proba, rtol=1e-5, atol=1e-6)
    assert bundle.to_input(np.zeros((3, 32, 32))).shape == (3, 1, 32, 32)  # single films as before


def _config(tmp_path: Path, source: str, **data) -> Path:
    cfg = {
        "name": "tiny-bilateral",
        "data": {"source": source, "task": "normal-abnormal", "pairs": {"enabled": True}, **data},
        "image_size": 32,
        "model": {"name": "bilateral", "options": {**FILM, "hidden": 0, "dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 8, "patience": 0, "progress": False, "transfer": "frozen",
                  "feature_fast_path": True},
        "workers": 1, "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "bilateral.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_training_scores_held_out_films_as_the_bundle_does_from_the_pairs(tmp_path: Path):
    from mammolens.data.adapters.base import load_source
    from mammolens.data.pairs import find_partners
    from mammolens.engine.config import preprocess_config
    from mammolens.engine.config import load_config
    from mammolens.engine.experiment import run_experiment
    from mammolens.preprocess import PreprocessCache

    source = paired_source(tmp_path / "src", women=14, unpaired=2)
    cfg = load_config(_config(tmp_path, str(source)))
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    bundle = load_model_bundle(summary["bundle"])
    manifest = load_source(source).manifest
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    test_ids = split["parts"]["test"]
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", preprocess_config(cfg))
    partner = find_partners(manifest).as_dict()
    batch = np.stack([pair_channels(cache.load(s), cache.load(partner[s]) if partner[s] != s else None)
                      for s in test_ids])
    from mammolens.engine.trainers import part_metrics

    labels = np.array([int(p != "normal") for p in manifest.df.set_index("sample_id").loc[test_ids, "pathology"]])
    metrics = part_metrics(bundle, labels, bundle.predict_proba(batch))
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        assert metrics[key] == pytest.approx(summary["metrics"]["test"][key], abs=1e-6)


def test_a_source_without_pairs_with_fallback_off_is_one_line(tmp_path: Path, capsys):
    # The built-in synthetic set shows one breast per woman: no film has a partner.
    path = _config(tmp_path, "synthetic", pairs={"enabled": True, "fallback": False},
                   synthetic={"n_per_class": 6, "size": 64, "seed": 1})
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the synthetic set's progress bar
    assert "has no partner film" in last and "data.pairs.fallback is off" in last
    assert last.startswith("mammolens: error: ") and ".png: sample '" in last  # names the film


def test_pairs_on_a_lesion_task_are_refused(tmp_path: Path, capsys):
    path = _config(tmp_path, "synthetic", task="benign-malignant", synthetic={"n_per_class": 6, "size": 64})
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "data.pairs: pairs are films of one woman; task benign-malignant is at lesion level" in capsys.readouterr().err
