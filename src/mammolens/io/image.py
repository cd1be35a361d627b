"""What a reader returns: pixels ready for a model, and the header facts needed to trust them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """Header facts about one image (one frame of a multi-frame file); never patient identifiers.

    ``normalization`` says how stored values became [0, 1]: ``window`` / ``voi_lut`` (DICOM VOI),
    ``bits_stored`` (DICOM BitsStored range through the rescale), ``modality_lut`` (the range of
    a DICOM Modality LUT table), ``dtype_max`` (divided by the dtype's maximum), ``none`` (float
    already in [0, 1]) or ``minmax`` (the image's own min/max: floats outside [0, 1], negative
    integers). ``read_meta`` reports the plan from the header; ``read_image`` what was done.
    """

    format: str
    shape: tuple[int, int]
    dtype: str
    bits_stored: int
    photometric: str = ""
    laterality: str = ""
    view: str = ""
    pixel_spacing_mm: tuple[float, float] | None = None
    transfer_syntax: str = ""
    windowed: bool = False
    inverted: bool = False
    frames: int = 1
    normalization: str = "dtype_max"


@dataclass(frozen=True, eq=False)  # compare pixels with numpy, not ==
class Image:
    """A 2-D float32 image in [0, 1] (0 = black on the display, whatever the source's convention)."""

    pixels: np.ndarray
    meta: ImageMeta
