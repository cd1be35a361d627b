"""``read_image`` / ``read_meta``: one entry point for every image format mammolens accepts."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from mammolens.io import arrays, raster
from mammolens.io.guards import DEFAULT_MAX_PIXELS, check_file, check_max_pixels
from mammolens.io.image import Image, ImageMeta
from mammolens.utils.errors import ImageReadError

_FORMATS = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".pgm": "pgm",
    ".png": "png",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".npy": "npy",
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_FORMATS))


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _format(path: str | os.PathLike) -> tuple[Path, str]:
    """Check the file, then pick its reader by extension (case-insensitive).

    Files with no or an unknown extension are read as DICOM when they carry the DICOM preamble:
    PACS exports are often named by UID (``1.2.840....123``) or have no extension at all.
    """
    path = check_file(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        if _is_dicom(path):
            return path, "dicom"
        what = f"unsupported file extension {path.suffix!r}" if path.suffix else "no file extension"
        raise ImageReadError(
            f"{what} and not a DICOM file; supported: {', '.join(SUPPORTED_SUFFIXES)}", path=path
        )
    return path, fmt


def _dicom() -> ModuleType:
    """pydicom costs ~0.4 s to import: only DICOM users pay it."""
    from mammolens.io import dicom

    return dicom


def read_meta(path: str | os.PathLike, *, frame: int | None = None) -> ImageMeta:
    """Header facts without decoding pixels: cheap enough to run over a whole dataset."""
    path, fmt = _format(path)
    try:
        if fmt == "dicom":
            return _dicom().read_meta(path, frame)
        if fmt == "npy":
            return arrays.read_meta(path, frame)
        return raster.read_meta(path, fmt, frame)
    except PermissionError as err:
        raise ImageReadError("cannot be read (permission denied)", path=path) from err


def read_image(
    path: str | os.PathLike, *, frame: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image:
    """Read one image as float32 [0, 1], 2-D, 0 = black as displayed.

    ``frame`` picks one image of a multi-frame DICOM, multi-page TIFF or (N, H, W) ``.npy``
    stack (a file holding several without ``frame`` is an error). Images with more than
    ``max_pixels`` pixels are rejected from the header, before any pixel buffer exists.
    """
    check_max_pixels(max_pixels)
    path, fmt = _format(path)
    try:
        if fmt == "dicom":
            return _dicom().read(path, frame, max_pixels)
        if fmt == "npy":
            return arrays.read(path, frame, max_pixels)
        return raster.read(path, fmt, frame, max_pixels)
    except PermissionError as err:
        raise ImageReadError("cannot be read (permission denied)", path=path) from err
