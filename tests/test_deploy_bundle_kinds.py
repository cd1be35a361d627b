"""Bundles beyond one plain image: test-time augmentation is served and exported; inputs the
Predictor cannot assemble (channels that are neither multi-scale crops nor film pairs) and what the
ONNX graph cannot take (lesion descriptors, several channels) are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_fixtures import SIZE, make_bundle

from mammolens.bundle.model import load_model_bundle
from mammolens.deploy.export import export_onnx
from mammolens.deploy.predictor import Predictor
from mammolens.utils.errors import ConfigError


def _images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).random((n, SIZE, SIZE), dtype=np.float32)


def test_a_tta_bundle_is_served_and_exported_with_its_augmentation(tmp_path):
    path = make_bundle(tmp_path / "tta", tta=8)
    bundle, images = load_model_bundle(path), _images()
    with_tta = bundle.predict_proba(images)
    bundle.tta = 1
    assert np.abs(with_tta - bundle.predict_proba(images)).max() > 1e-4  # the averaging changes scores
    bundle.tta = 8
    torch_predictor = Predictor.load(path)
    np.testing.assert_allclose(torch_predictor.predict_arrays(images), with_tta, rtol=0, atol=1e-6)
    report = export_onnx(path, tmp_path / "tta.onnx", exporter="torchscript")  # refused if off by > 1e-4
    ort = Predictor.load(path, "onnxruntime", onnx_path=report.path)
    np.testing.assert_allclose(ort.predict_arrays(images), with_tta, rtol=0, atol=1e-4)


def test_three_channels_that_are_no_multiscale_crop_are_refused_in_one_line(tmp_path):
    path = make_bundle(tmp_path / "b", in_chans=3)  # a pipeline without multiscale_crop: what would fill them?
    for load in (lambda: Predictor.load(path), lambda: export_onnx(path, tmp_path / "x.onnx")):
        with pytest.raises(ConfigError, match="3-channel inputs that are neither multi-scale crops") as err:
            load()
        assert "\n" not in str(err.value)
    assert not (tmp_path / "x.onnx").exists()


def test_the_onnx_export_of_a_descriptor_bundle_is_refused_in_one_line(tmp_path):
    head = {"names": ["radius_mm"], "mean": [1.0], "scale": [1.0], "coef": [[0.0], [0.5]]}
    path = make_bundle(tmp_path / "b", roi=True, descriptor_head=head)
    assert Predictor.load(path).spec.descriptors == ["radius_mm"]  # torch serves it (test_deploy_lesion.py)
    with pytest.raises(ConfigError, match="lesion descriptors.*torch backend") as err:
        export_onnx(path, tmp_path / "x.onnx")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.onnx").exists()
