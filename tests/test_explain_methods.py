"""CAM methods on models whose right answer is known: maps land on the evidence, right way up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mammolens.bundle.model import Bundle
from mammolens.explain import CAM_METHODS, explain_image
from mammolens.models import create_model
from mammolens.models.base import MammoModel
from mammolens.utils.errors import ConfigError

SIZE = 32
BLOB = (70, 20)  # (x, y) of the bright blob on the 96 x 64 original


class BlobNet(MammoModel):
    """Fixed weights: two channels that fire only on bright blobs (box average above 0.5); the
    'malignant' logit is their mean response, so the evidence is the blob and nothing else."""

    def __init__(self, single_logit: bool = False) -> None:
        super().__init__({"name": "blob-net", "num_classes": 1 if single_logit else 2})
        self.detect = nn.Conv2d(1, 2, 5, padding=2)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 1 if single_logit else 2)
        with torch.no_grad():
            self.detect.weight.fill_(1.0 / 25)
            self.detect.weight[1] *= 0.5
            self.detect.bias.copy_(torch.tensor([-0.5, -0.25]))
            self.head.weight.copy_(torch.tensor([[4.0, 4.0]]) if single_logit else torch.tensor([[-4.0, -4.0], [4.0, 4.0]]))
            self.head.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.detect(x)).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def backbone_blocks(self) -> list[nn.Module]:
        return [self.detect]

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def cam_target_layers(self) -> dict[str, nn.Module]:
        return {"detect": self.act}


def make_bundle(model: MammoModel, classes=("benign", "malignant"), size: int = SIZE) -> Bundle:
    return Bundle(
        path=Path("in-memory"), model=model.eval(), classes=list(classes), task="benign-malignant",
        preprocess={"steps": [{"name": "resize", "size": size}]}, normalisation={"mean": 0.0, "std": 1.0},
        threshold=0.5, temperature=1.0, metrics={}, provenance={}, config={},
    )  # fmt: skip


def blob_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 0.2, size=(64, 96)).astype(np.float32)
    yy, xx = np.mgrid[:64, :96]
    image[(xx - BLOB[0]) ** 2 + (yy - BLOB[1]) ** 2 <= 6**2] = 1.0
    return image


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "scorecam", "occlusion"])
@pytest.mark.parametrize("single_logit", [False, True])
def test_map_peaks_on_the_blob_on_the_original_image(method: str, single_logit: bool) -> None:
    bundle = make_bundle(BlobNet(single_logit))
    image = blob_image()
    e = explain_image(bundle, image, method=method, target="malignant")
    heat = e.heatmap
    assert heat.shape == image.shape and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    # occlusion's patch is a quarter of the input: its peak is coarser than a CAM's
    tolerance = 20 if method == "occlusion" else 6
    assert np.hypot(x - BLOB[0], y - BLOB[1]) <= tolerance, (method, x, y)
    # orientation pinned: the blob is hot, the far corner is cold (no normaliser inverted the map)
    assert heat[BLOB[1], BLOB[0]] > 0.5 > heat[60:, :20].mean()
    assert e.target == "malignant" and e.target_index == 1
    # the probabilities come from the CAM's own forward: they must be the bundle's
    expected = bundle.predict_proba(e.input_image[None])[0]
    assert [e.probabilities[c] for c in bundle.classes] == pytest.approx(expected.tolist(), abs=1e-6)


def test_eigencam_does_not_invert_when_the_svd_flips_its_sign(monkeypatch) -> None:
    # An SVD may return (-U, S, -V^T) as validly as (U, S, V^T); the library's projection then
    # inverts the map. Ours turns it to agree with the activation energy, so it must not change.
    from pytorch_grad_cam import EigenCAM

    from mammolens.explain import methods

    bundle = make_bundle(BlobNet())
    image = blob_image()
    before = explain_image(bundle, image, method="eigencam").heatmap
    library = methods._engine(EigenCAM)
    monkeypatch.setitem(methods.CAM_METHODS._items, "eigencam-library", library)
    library_before = explain_image(bundle, image, method="eigencam-library").heatmap
    svd = np.linalg.svd

    def flipped(a, *args, **kwargs):
        u, s, vt = svd(a, *args, **kwargs)
        return -u, s, -vt

    monkeypatch.setattr(np.linalg, "svd", flipped)
    after = explain_image(bundle, image, method="eigencam").heatmap
    library_after = explain_image(bundle, image, method="eigencam-library").heatmap
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert library_before[BLOB[1], BLOB[0]] > 0.5 > library_after[BLOB[1], BLOB[0]]  # the library's flips


def test_benign_target_of_a_single_logit_head_maps_the_opposite_evidence() -> None:
    bundle = make_bundle(BlobNet(single_logit=True))
    e = explain_image(bundle, blob_image(), method="gradcam", target=0)
    # every unit argues for 'malignant', so there is no evidence for 'benign' anywhere
    assert e.target == "benign" and float(e.heatmap.max()) == 0.0


def test_default_target_binary_is_the_positive_class_multiclass_the_top_class() -> None:
    assert explain_image(make_bundle(BlobNet()), blob_image()).target == "malignant"
    model = create_model("scratch-cnn", 3, depth=2, width=4, hidden=0, dropout=0.0)
    bundle = make_bundle(model, classes=("normal", "benign", "malignant"))
    e = explain_image(bundle, blob_image(), method="gradcam")
    assert e.target == max(e.probabilities, key=e.probabilities.get)
    for index in range(3):
        assert explain_image(bundle, blob_image(), target=index).target_index == index


def test_bad_method_target_and_layer_are_one_line_errors() -> None:
    bundle = make_bundle(BlobNet())
    with pytest.raises(ConfigError, match=r"unknown CAM method 'gradcam3'; known: attention, eigencam, gradcam"):
        explain_image(bundle, blob_image(), method="gradcam3")
    with pytest.raises(ConfigError, match=r"index 2 is out of range: this bundle has 2 classes \(0..1: benign, malignant\)"):
        explain_image(bundle, blob_image(), target=2)
    with pytest.raises(ConfigError, match="not one of this bundle's classes"):
        explain_image(bundle, blob_image(), target="normal")
    with pytest.raises(ConfigError, match=r"layer 'features.norm5' does not exist .* valid layers include: detect, act") as info:
        explain_image(bundle, blob_image(), layer="features.norm5")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="method 'occlusion' reads no layer"):
        explain_image(bundle, blob_image(), method="occlusion", layer="act")


def test_layer_override_by_name() -> None:
    model = create_model("scratch-cnn", 2, depth=3, width=4, hidden=0, dropout=0.0)
    bundle = make_bundle(model, size=64)
    e = explain_image(bundle, blob_image(), layer="encoder.1")
    assert e.layers == ["encoder.1"] and e.heatmap.shape == (64, 96)
    assert explain_image(bundle, blob_image()).layers == ["encoder.2"]  # the model's own choice


def test_attention_model_offers_its_own_weights() -> None:
    model = create_model("attention", 2, encoder_depth=2, encoder_width=4, lstm_hidden=8, attn_dim=4, dropout=0.0)
    bundle = make_bundle(model)
    e = explain_image(bundle, blob_image(), method="attention")
    assert e.heatmap.shape == (64, 96) and np.isfinite(e.heatmap).all() and 0.9 < e.heatmap.max() <= 1.0
    assert "attention" in CAM_METHODS
    with pytest.raises(ConfigError, match="method 'attention' needs the attention model; this bundle's model is 'blob-net'"):
        explain_image(make_bundle(BlobNet()), blob_image(), method="attention")


def test_parameters_keep_their_requires_grad_after_a_cam() -> None:
    model = BlobNet()
    model.head.weight.requires_grad_(False)
    explain_image(make_bundle(model), blob_image(), method="gradcam")
    assert model.detect.weight.requires_grad and not model.head.weight.requires_grad
    assert model.detect.weight.grad is None  # the backward stopped at the target layer
