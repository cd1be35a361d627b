"""The hybrid's explanations: one map per backbone and a fused one weighted by each branch's share."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_explain_methods import blob_image, make_bundle

from mammolens.explain import explain_image
from mammolens.models.classifier import BackboneClassifier
from mammolens.utils.errors import ConfigError

BACKBONES = ["mobilenetv2_100", "tf_efficientnet_lite0"]


@pytest.fixture(scope="module")
def hybrid() -> BackboneClassifier:
    torch.manual_seed(0)
    return BackboneClassifier(BACKBONES, 2, hidden=0).eval()


def test_per_backbone_and_fused_maps(hybrid: BackboneClassifier) -> None:
    bundle = make_bundle(hybrid, size=64)
    image = blob_image()
    e = explain_image(bundle, image, method="gradcam")
    assert list(e.per_backbone) == BACKBONES
    for heat in (e.heatmap, *e.per_backbone.values()):
        assert heat.shape == image.shape and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    assert sum(e.branch_weights.values()) == pytest.approx(1.0)
    assert e.layers == [f"backbones.{b}.model.bn2" for b in BACKBONES]
    # the weights are each branch's gradient x feature share of the target logit (negative -> 0)
    x = bundle.to_input(e.input_image[None])
    features = hybrid.forward_features(x).detach().requires_grad_(True)
    hybrid.forward_head(features)[0, 1].backward()
    share = (features.grad * features)[0]
    raw = [max(0.0, float(share[:1280].sum().detach())), max(0.0, float(share[1280:].sum().detach()))]
    expected = [r / sum(raw) for r in raw] if sum(raw) > 0 else [0.5, 0.5]
    assert [e.branch_weights[b] for b in BACKBONES] == pytest.approx(expected, abs=1e-4)


def test_a_branch_the_head_ignores_gets_no_weight(hybrid: BackboneClassifier) -> None:
    linear = hybrid.head[-1]
    saved = linear.weight.detach().clone()
    try:
        with torch.no_grad():
            linear.weight[:, :1280] = 0.0  # the head no longer reads MobileNetV2's features
            linear.weight[1, 1280:] = linear.weight[1, 1280:].abs()  # and EfficientNet argues for class 1
        e = explain_image(make_bundle(hybrid, size=64), blob_image(), method="gradcam", target=1)
        assert e.branch_weights == {"mobilenetv2_100": 0.0, "tf_efficientnet_lite0": 1.0}
        fused = e.input_heatmap
        np.testing.assert_allclose(e.heatmap, e.per_backbone["tf_efficientnet_lite0"], atol=1e-5)
        assert fused.max() == pytest.approx(1.0)
    finally:
        with torch.no_grad():
            linear.weight.copy_(saved)


def test_eigencam_and_an_explicit_layer_on_the_hybrid(hybrid: BackboneClassifier) -> None:
    bundle = make_bundle(hybrid, size=64)
    e = explain_image(bundle, blob_image(), method="eigencam")
    assert list(e.per_backbone) == BACKBONES
    one = explain_image(bundle, blob_image(), layer="mobilenetv2_100.model.blocks.5")
    assert one.layers == ["backbones.mobilenetv2_100.model.blocks.5"] and list(one.per_backbone) == ["mobilenetv2_100.model.blocks.5"]
    with pytest.raises(ConfigError, match=r"layer 'bn2' matches \d+ modules .* valid layers include: .*backbones.tf_efficientnet_lite0.model.bn2"):
        explain_image(bundle, blob_image(), layer="bn2")
