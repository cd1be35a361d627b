"""PGM, PNG, TIFF and JPEG through Pillow, with our size guard ahead of Pillow's bomb check.

The plugin classes are opened directly (not through ``PIL.Image.open``) because ``open`` runs
Pillow's decompression-bomb check before we see the header: our ``max_pixels`` must be the
first line of defence, report the file in one line, and be overridable per call.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import JpegImagePlugin, PngImagePlugin, PpmImagePlugin, TiffImagePlugin

from mammolens.io.guards import check_finite, check_frame, check_shape
from mammolens.io.image import Image, ImageMeta
from mammolens.io.scaling import between, luma, to_unit, unit_plan
from mammolens.utils.errors import ImageReadError

_OPENERS = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "pgm": PpmImagePlugin.PpmImageFile,
}
_FORMAT = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "PPM": "pgm"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, IndexError, KeyError)
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"}


@contextlib.contextmanager
def _open(path: Path, expected: str) -> Iterator[PILImage.Image]:
    """Open the header, trying the extension's format first (mislabelled PNG/JPEG are common)."""
    first_error = None
    for fmt in [expected, *(f for f in _OPENERS if f != expected)]:
        try:
            im = _OPENERS[fmt](str(path))
        except SyntaxError as err:  # Pillow's "not this format" (or a broken signature)
            first_error = first_error or err
            continue
        except _DECODE_ERRORS as err:
            raise ImageReadError(f"corrupt {fmt.upper()} header", path=path) from err
        try:
            yield im
        finally:
            im.close()
        return
    raise ImageReadError(
        f"is not a readable {expected.upper()} image, nor any other supported raster format",
        path=path,
    )


def _stored_dtype(im: PILImage.Image) -> np.dtype:
    """The sample type on disk; Pillow widens 16-bit PGM/PNG and signed/32-bit TIFF to int32 'I'."""
    if im.mode == "1":
        return np.dtype(np.bool_)
    if im.mode.startswith("I;16"):
        return np.dtype(np.uint16)
    if im.mode == "F":
        return np.dtype(np.float32)
    if im.mode == "I":
        if im.format == "TIFF":
            bits = im.tag_v2.get(TiffImagePlugin.BITSPERSAMPLE, 32)
            bits = bits[0] if isinstance(bits, tuple) else bits
            signed = im.tag_v2.get(TiffImagePlugin.SAMPLEFORMAT, 1)
            signed = (signed[0] if isinstance(signed, tuple) else signed) == 2
            return np.dtype(f"{'i' if signed else 'u'}{max(int(bits), 8) // 8}")
        return np.dtype(np.uint16)
    return np.dtype(np.uint8)


def _meta(path: Path, im: PILImage.Image, frames: int) -> ImageMeta:
    dtype = _stored_dtype(im)
    check_shape(path, (im.height, im.width))
    return ImageMeta(
        format=_FORMAT.get(im.format or "", "unknown"),
        shape=(im.height, im.width),
        dtype=str(dtype),
        bits_stored=1 if dtype == np.bool_ else dtype.itemsize * 8,
        frames=frames,
        normalization=unit_plan(dtype),
    )


def _seek(path: Path, im: PILImage.Image, frame: int | None, *, need_one: bool) -> int:
    """Move to ``frame``; ``need_one``: a multi-page file without a frame is an error."""
    frames = getattr(im, "n_frames", 1)
    if frame is None and not need_one:
        return frames
    index = check_frame(path, frame, frames)
    if index:
        try:
            im.seek(index)
        except _DECODE_ERRORS as err:
            raise ImageReadError(f"cannot read frame {index}: the file is corrupt or truncated there", path=path) from err
    return frames


def read_meta(path: Path, expected: str, frame: int | None = None) -> ImageMeta:
    with _open(path, expected) as im:
        frames = _seek(path, im, frame, need_one=False)
        return _meta(path, im, frames)


def read(path: Path, expected: str, frame: int | None, max_pixels: int) -> Image:
    with _open(path, expected) as im:
        frames = _seek(path, im, frame, need_one=True)
        meta = _meta(path, im, frames)
        check_shape(path, meta.shape, max_pixels)
        with warnings.catch_warnings():
            # Our max_pixels check has already passed this size; Pillow's warning adds nothing.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            try:
                im.load()
            except PILImage.DecompressionBombError as err:
                raise ImageReadError("exceeds Pillow's decompression-bomb limit", path=path) from err
            except _DECODE_ERRORS as err:
                raise ImageReadError(f"corrupt or truncated {meta.format.upper()} data: the pixels end early or "
                                     "do not decode", path=path) from err
        if im.mode in _COLOUR_MODES:
            pixels, normalization = between(luma(np.asarray(im.convert("RGB"))), 0, 255), "dtype_max"
        else:
            stored = np.asarray(im)
            if stored.ndim == 3:  # LA / La: grey plus alpha
                stored = stored[..., 0]
            stored = stored.astype(np.dtype(meta.dtype), copy=False)
            check_finite(path, stored)
            pixels, normalization = to_unit(stored)
    return Image(pixels=pixels, meta=replace(meta, normalization=normalization))
