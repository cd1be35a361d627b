"""The Predictor reproduces the bundle's own scores, checks its input, and is safe across threads."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from deploy_fixtures import film, make_bundle, write_dicom, write_png

import mammolens.explain as explain
from mammolens.bundle.model import load_model_bundle
from mammolens.deploy.predictor import Predictor
from mammolens.preprocess import Pipeline, sample_from_row
from mammolens.preprocess.sample import default_loader
from mammolens.utils.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture(scope="module")
def lesion_bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("l") / "bundle", roi=True)


def _reference(bundle_dir, path, rois=()):
    """What training fed the model: sample_from_row + Pipeline(bundle.preprocess) + Bundle.predict_proba."""
    bundle = load_model_bundle(bundle_dir)
    sample, _ = sample_from_row({"path": str(path), "rois": json.dumps([list(r) for r in rois])}, default_loader)
    return bundle.predict_proba(Pipeline(bundle.preprocess)(sample).pixels[None])[0]


def test_file_and_array_give_the_bundles_own_probabilities(bundle_dir, tmp_path):
    predictor = Predictor.load(bundle_dir)
    pixels = film(1)
    png = write_png(tmp_path / "a.png", pixels)
    expected = _reference(bundle_dir, png)
    got = predictor.predict(png)
    np.testing.assert_allclose([got.probabilities["benign"], got.probabilities["malignant"]], expected, atol=1e-6)
    from_array = predictor.predict(np.asarray(default_loader(str(png)).pixels))
    assert from_array.probabilities == pytest.approx(got.probabilities, abs=1e-6)
    assert got.threshold == 0.4
    assert got.decision == ("malignant" if expected[1] >= 0.4 else "benign")
    assert got.label == ["benign", "malignant"][int(np.argmax(expected))]
    assert got.heatmap is None


def test_decision_follows_the_bundle_threshold(tmp_path):
    pixels = film(2)
    p = Predictor.load(make_bundle(tmp_path / "lo", threshold=0.0)).predict(pixels)
    assert p.decision == "malignant"
    p = Predictor.load(make_bundle(tmp_path / "hi", threshold=1.0)).predict(pixels)
    assert p.decision == "benign" or p.probabilities["malignant"] == 1.0


def test_reads_dicom(bundle_dir, tmp_path):
    pixels = film(3)
    dcm = write_dicom(tmp_path / "a.dcm", pixels)
    got = Predictor.load(bundle_dir).predict(dcm)
    expected = _reference(bundle_dir, dcm)
    assert got.probabilities["malignant"] == pytest.approx(float(expected[1]), abs=1e-6)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 32, 32), np.float32), "expected a 2-D greyscale image"),
        (np.full((32, 32), np.nan, np.float32), "NaN or infinite"),
        (np.full((32, 32), 255.0, np.float32), r"within \[0, 1\]"),
        (np.full((32, 32), -0.5, np.float32), r"within \[0, 1\]"),
    ],
)
def test_arrays_are_checked_against_the_input_spec(bundle_dir, image, message):
    with pytest.raises(DataError, match=message):
        Predictor.load(bundle_dir).predict(image)


def test_a_lesion_model_asks_for_the_roi_instead_of_scoring_the_film(lesion_bundle_dir, tmp_path):
    predictor = Predictor.load(lesion_bundle_dir)
    assert predictor.spec.needs_roi
    pixels = film(4)
    with pytest.raises(ConfigError, match=r"lesion crops .*crop_roi.*roi=\(x, y, r\)"):
        predictor.predict(pixels)
    with pytest.raises(ConfigError, match="outside the 96x96 image"):
        predictor.predict(pixels, roi=(500, 10, 8))
    png = write_png(tmp_path / "l.png", pixels)
    got = predictor.predict(png, roi=(20, 40, 8))
    expected = _reference(lesion_bundle_dir, png, rois=[(20, 40, 8)])
    assert got.probabilities["malignant"] == pytest.approx(float(expected[1]), abs=1e-6)
    elsewhere = predictor.predict(png, roi=(60, 70, 8))
    assert elsewhere.probabilities != got.probabilities  # the crop really follows the ROI


def test_batch_matches_single_and_threads_share_one_model(bundle_dir):
    predictor = Predictor.load(bundle_dir, batch_size=3)
    images = [film(i) for i in range(7)]
    single = [predictor.predict(im).probabilities for im in images]
    batch = [p.probabilities for p in predictor.predict_batch(images)]
    for s, b in zip(single, batch):
        assert s == pytest.approx(b, abs=1e-6)
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda im: predictor.predict(im).probabilities, images * 4))
    for s, t in zip(single * 4, threaded):
        assert s == pytest.approx(t, abs=1e-6)


def test_heatmap_comes_from_explain_or_says_it_is_missing(bundle_dir):
    predictor = Predictor.load(bundle_dir)
    pixels = film(5)
    if not hasattr(explain, "explain_image"):
        with pytest.raises(ConfigError, match="explanations are not installed"):
            predictor.predict(pixels, heatmap=True)
        return
    heatmap = predictor.predict(pixels, heatmap=True).heatmap
    assert heatmap.shape == pixels.shape and heatmap.dtype == np.float32
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0


def test_bad_backend_and_missing_files(bundle_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'; known backends: torch, onnxruntime"):
        Predictor.load(bundle_dir, backend="tensorrt")
    with pytest.raises(ConfigError, match="run `mammolens export"):
        Predictor.load(bundle_dir, backend="onnxruntime", onnx_path=tmp_path / "none.onnx")
    from mammolens.utils.errors import ImageReadError

    with pytest.raises(ImageReadError, match="file not found"):
        Predictor.load(bundle_dir).predict(tmp_path / "missing.png")
