"""Tiny bundles for the deploy tests: a registered scratch CNN on 32x32 input, film and lesion variants.

Weights are random but fixed (seeded): the deploy code must reproduce the bundle's own scores, which
does not need a trained model; the BatchNorm statistics are perturbed so eval mode is exercised.
"""

from __future__ import annotations

from pathlib import Path

import dicom_fixtures
import numpy as np
import pytest
import torch
from dicom_fixtures import PATIENT_ID, PATIENT_NAME  # noqa: F401 - the deploy tests search for them
from PIL import Image

from mammolens.bundle.model import save_bundle
from mammolens.data.synthetic import generate
from mammolens.models import create_model
from mammolens.preprocess.pipeline import default_steps

SIZE = 32


def make_bundle(out: Path, *, roi: bool = False, threshold: float = 0.4, seed: int = 0, tta: int = 1,
                in_chans: int = 1, descriptor_head: dict | None = None, steps: list[dict] | None = None,
                bilateral: bool = False) -> Path:  # fmt: skip
    """``bilateral``: the siamese ``bilateral`` model over the scratch CNN, a film read with its other film."""
    torch.manual_seed(seed)
    if bilateral:
        model = create_model("bilateral", 2, in_chans=2, film_model="scratch-cnn",
                             film_options={"depth": 2, "width": 4}, hidden=0, dropout=0.0)  # fmt: skip
    else:
        model = create_model("scratch-cnn", 2, depth=2, width=4, hidden=0, dropout=0.0, in_chans=in_chans)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return save_bundle(
        out, model.eval(), classes=["benign", "malignant"], task="benign-malignant",
        preprocess={"steps": steps if steps is not None else default_steps(SIZE, roi=roi)}, normalisation={"mean": 0.45, "std": 0.25},
        threshold=threshold, temperature=1.3, metrics={}, provenance={"manifest_hash": "ab" * 8,
        "source_path": "/home/someone/St-Elsewhere/patient-0042"},
        config={"model": {"name": "bilateral"}, "data": {"pairs": {"enabled": True}}} if bilateral
        else {"model": {"name": "scratch-cnn"}},
        tta=tta, descriptor_head=descriptor_head,
    )  # fmt: skip


def film(seed: int, size: int = 96) -> np.ndarray:
    """A breast-like bright blob on black, float32 [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = size * 0.2, size * (0.4 + 0.2 * rng.random())
    blob = np.exp(-(((xx - cx) / (0.5 * size)) ** 2 + ((yy - cy) / (0.4 * size)) ** 2))
    img = np.where(blob > 0.3, 0.3 + 0.6 * blob + 0.1 * rng.random((size, size)), 0.0)
    return np.clip(img, 0, 1).astype(np.float32)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray((pixels * 65535).round().astype(np.uint16)).save(path)
    return path


def write_dicom(path: Path, pixels: np.ndarray, laterality: str = "L") -> Path:
    """A 16-bit mammography DICOM of float [0, 1] pixels, patient identifiers set (dicom_fixtures)."""
    return dicom_fixtures.write_dicom(path, (pixels * 65535).round().astype(np.uint16), ImageLaterality=laterality)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """A module's tiny film bundle (``make_bundle``), for the export tests."""
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small synthetic dataset to calibrate int8 on."""
    out = tmp_path_factory.mktemp("syn")
    generate(out, n_per_class=6, size=64, seed=0, progress=False)
    return out
