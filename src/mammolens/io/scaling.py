"""Mapping stored sample values to float32 [0, 1], shared by the non-DICOM readers."""

from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma: the weights Pillow and OpenCV use, so a colour export of a grey film
# (equal channels) comes back unchanged.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Grey level of an (H, W, 3+) array; extra channels (alpha) are ignored."""
    return rgb[..., :3].astype(np.float32) @ _LUMA


def between(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 1] in float32 (a constant range maps to 0)."""
    span = float(hi) - float(lo)
    out = np.asarray(values, dtype=np.float32) - np.float32(lo)
    if span > 0:
        out /= np.float32(span)
    else:
        out[...] = 0
    return np.clip(out, 0.0, 1.0, out=out)


def minmax(values: np.ndarray) -> np.ndarray:
    return between(values, float(values.min()), float(values.max()))


def unit_plan(dtype: np.dtype) -> str:
    """What ``to_unit`` will do for this dtype if the values fit the plan."""
    return "none" if np.issubdtype(dtype, np.floating) else "dtype_max"


def to_unit(values: np.ndarray) -> tuple[np.ndarray, str]:
    """Integers over the dtype's maximum; floats kept if in [0, 1]; otherwise min-max.

    Returns the float32 image and the ``ImageMeta.normalization`` label of what was done.
    Signed integers with negative values and floats outside [0, 1] have no fixed range, so
    they fall back to the image's own min/max (and say so).
    """
    if values.dtype == np.bool_:
        return values.astype(np.float32), "dtype_max"
    if np.issubdtype(values.dtype, np.integer):
        if np.issubdtype(values.dtype, np.signedinteger) and values.min() < 0:
            return minmax(values), "minmax"
        return between(values, 0, np.iinfo(values.dtype).max), "dtype_max"
    lo, hi = float(values.min()), float(values.max())
    if 0.0 <= lo and hi <= 1.0:
        return np.array(values, dtype=np.float32), "none"
    return between(values, lo, hi), "minmax"
