"""``.npy`` images: one 2-D array, or an (N, H, W) stack read one frame at a time.

Memory-mapped so that picking a frame of a large stack reads only that frame, and loaded with
``allow_pickle=False`` so that a file can never run code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from mammolens.io.guards import check_finite, check_frame, check_shape
from mammolens.io.image import Image, ImageMeta
from mammolens.io.scaling import to_unit, unit_plan
from mammolens.utils.errors import ImageReadError

_MAGIC = b"\x93NUMPY"


def _open(path: Path) -> np.ndarray:
    with open(path, "rb") as fh:
        if fh.read(len(_MAGIC)) != _MAGIC:
            raise ImageReadError("is not a NumPy .npy file (no \\x93NUMPY signature)", path=path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ImageReadError("invalid or truncated .npy file: its header or data does not match", path=path) from err
    kind = array.dtype.kind
    if kind not in "biuf":
        raise ImageReadError(f"has dtype {array.dtype}, expected bool, integer or float pixels", path=path)
    if array.ndim not in (2, 3):
        raise ImageReadError(
            f"has shape {array.shape}; expected (H, W) or a stack (N, H, W)", path=path
        )
    return array


def _meta(path: Path, array: np.ndarray) -> ImageMeta:
    check_shape(path, array.shape)
    return ImageMeta(
        format="npy",
        shape=(int(array.shape[-2]), int(array.shape[-1])),
        dtype=str(array.dtype),
        bits_stored=1 if array.dtype == np.bool_ else array.dtype.itemsize * 8,
        frames=array.shape[0] if array.ndim == 3 else 1,
        normalization=unit_plan(array.dtype),
    )


def read_meta(path: Path, frame: int | None = None) -> ImageMeta:
    meta = _meta(path, _open(path))
    if frame is not None:
        check_frame(path, frame, meta.frames)
    return meta


def read(path: Path, frame: int | None, max_pixels: int) -> Image:
    array = _open(path)
    meta = _meta(path, array)
    index = check_frame(path, frame, meta.frames)
    check_shape(path, meta.shape, max_pixels)
    if array.ndim == 3 and index is None:  # a stack of one
        index = 0
    try:
        stored = np.array(array if index is None else array[index])
    except (ValueError, OSError) as err:
        raise ImageReadError("cannot read the pixel data: the file is shorter than its header says", path=path) from err
    check_finite(path, stored)
    pixels, normalization = to_unit(stored)
    return Image(pixels=pixels, meta=replace(meta, normalization=normalization))
