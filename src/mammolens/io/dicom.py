"""DICOM through pydicom: stored values -> modality LUT -> VOI LUT or window -> inversion -> padding.

Inversion: MONOCHROME1, or ``PresentationLUTShape`` INVERSE on MONOCHROME2. The DX and MG IODs
pair MONOCHROME1 with INVERSE, so there INVERSE is the inversion MONOCHROME1 already implies and
is applied once. Pixels equal to ``PixelPaddingValue`` (up to ``PixelPaddingRangeLimit``) are
not tissue: they become 0, the black of a background, whatever the windowing made of them.

Only the tags listed in ``_meta`` are read into ImageMeta: patient identifiers never leave this
module, and pydicom's own warnings (which can quote tag values) are silenced while reading.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, pixel_array

from mammolens.io.guards import check_frame, check_shape
from mammolens.io.image import Image, ImageMeta
from mammolens.io.scaling import between, luma
from mammolens.utils.errors import ImageReadError

# ViewPosition values of the DICOM mammography view code set (CID 4014), plus their L/R-prefixed
# vendor spellings (LCC, RMLO). Bare L/R tokens are ignored: in PatientOrientation they are
# patient directions, not the breast's side.
_VIEWS = {"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AT", "CV"}
_SIDES = {"LEFT": "L", "RIGHT": "R"}
_VIEW_MEANINGS = {
    "craniocaudal": "CC",
    "mediolateraloblique": "MLO",
    "mediolateral": "ML",
    "lateromedial": "LM",
    "lateromedialoblique": "LMO",
    "exaggeratedcraniocaudal": "XCCL",
}
# ViewCodeSequence code values (SNOMED CT, and the older SNOMED RT ones) for when CodeMeaning is
# missing or spelt otherwise: CMMD's files carry the view only here (ViewPosition is empty).
_VIEW_CODES = {"399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO",
               "399260004": "ML", "R-10224": "ML", "399352003": "LM", "R-10228": "LM"}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
T = TypeVar("T")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings around pydicom calls only: its validation warnings quote tag values."""
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("ignore")
        yield


def _header(path: Path) -> Dataset:
    try:
        with _quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as err:
        raise ImageReadError("is not a DICOM file (no 'DICM' preamble)", path=path) from err
    except Exception as err:  # pydicom raises many types for a truncated or garbled header
        raise ImageReadError("corrupt or truncated DICOM header: it ends early or holds a malformed element",
                             path=path) from err  # pydicom's own words can quote the file's content
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError("holds no image (no Rows/Columns): truncated, or not an image object", path=path)
    return ds


def _tokens(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    values = value if isinstance(value, MultiValue | list) else [value or ""]
    return [t for v in values for t in re.split(r"[^A-Z]+", str(v).upper()) if t]


def _from_tokens(tokens: list[str]) -> tuple[str, str]:
    """(laterality, view) from tokens such as ['LCC'], ['LEFT', 'MLO'], ['CC']."""
    sides, views = set(), []
    for token in tokens:
        if token in _VIEWS:
            views.append(token)
        elif token in _SIDES:
            sides.add(_SIDES[token])
        elif token[:1] in "LR" and token[1:] in _VIEWS:
            sides.add(token[0])
            views.append(token[1:])
    return (sides.pop() if len(sides) == 1 else ""), (views[0] if len(set(views)) == 1 else "")


def _view_code(ds: Dataset) -> str:
    for item in ds.get("ViewCodeSequence") or []:
        meaning = re.sub(r"[^a-z]", "", str(item.get("CodeMeaning", "")).lower())
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
        code = str(item.get("CodeValue", "")).strip()
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
    return ""


def _laterality_and_view(ds: Dataset) -> tuple[str, str]:
    """Laterality: ImageLaterality, Laterality, then L/R spelt into ViewPosition/PatientOrientation.

    View: ViewPosition, ViewCodeSequence, then PatientOrientation holding a view code (CBIS-DDSM).
    """
    vp_side, vp_view = _from_tokens(_tokens(ds, "ViewPosition"))
    po_side, po_view = _from_tokens(_tokens(ds, "PatientOrientation"))
    side = ""
    for value in (ds.get("ImageLaterality"), ds.get("Laterality"), vp_side, po_side):
        value = str(value or "").strip().upper()
        if value in ("L", "R"):
            side = value
            break
    return side, vp_view or _view_code(ds) or po_view


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _stored_dtype(ds: Dataset) -> str:
    allocated = int(ds.get("BitsAllocated") or 16)
    if allocated == 1:
        return "bool"
    return f"{'int' if ds.get('PixelRepresentation', 0) == 1 else 'uint'}{allocated}"


def _has_voi_lut(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _has_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _meta(path: Path, ds: Dataset) -> ImageMeta:
    shape = (int(ds.Rows), int(ds.Columns))
    check_shape(path, shape)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    mono = photometric in _MONOCHROME
    laterality, view = _laterality_and_view(ds)
    windowed = mono and (_has_voi_lut(ds) or _has_window(ds))
    if windowed:
        normalization = "voi_lut" if _has_voi_lut(ds) else "window"
    elif ds.get("ModalityLUTSequence"):
        normalization = "modality_lut"
    else:
        normalization = "bits_stored"
    return ImageMeta(
        format="dicom",
        shape=shape,
        dtype=_stored_dtype(ds),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        photometric=photometric,
        laterality=laterality,
        view=view,
        pixel_spacing_mm=_spacing(ds),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        windowed=windowed,
        inverted=photometric == "MONOCHROME1"
        or (photometric == "MONOCHROME2" and str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"),
        frames=max(int(ds.get("NumberOfFrames") or 1), 1),
        normalization=normalization,
    )


def _parsed(path: Path, what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run a header-parsing step; a malformed value (say WindowWidth 'abc') becomes one line."""
    try:
        return fn(*args)
    except Exception as err:  # pydicom converts values lazily, and raises many types (BytesLengthException...)
        raise ImageReadError(f"invalid DICOM {what}: {_field(err)}", path=path) from err


def _pixel_fault(meta: ImageMeta) -> str:
    """What is wrong with pixel data that would not decode, in our words (a decoder's can quote the file)."""
    syntax = pydicom.uid.UID(meta.transfer_syntax)
    if syntax and syntax.is_compressed:
        return f"{syntax.name} data that is corrupt or truncated, or no decoder for it is installed"
    return (f"its length does not match {meta.frames} frame(s) of Rows x Columns = {meta.shape[0]}x{meta.shape[1]} "
            f"{meta.dtype} samples: the file is truncated or corrupt")


def _field(err: Exception) -> str:
    """Our own messages name the field (``_window``'s, ``check_*``'s); a library's might quote a patient."""
    return str(err) if isinstance(err, _FieldError) else "a value cannot be read as the standard defines it"


class _FieldError(ValueError):
    """A header value mammolens itself found malformed; its message is ours and names the field."""


def read_meta(path: Path, frame: int | None = None) -> ImageMeta:
    ds = _header(path)
    meta = _parsed(path, "header value", _meta, path, ds)
    if frame is not None:
        check_frame(path, frame, meta.frames)
    return meta


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom's ``apply_windowing`` (the first window of PS3.3 C.11.2.1.2), mapped to [0, 1].

    Its output spans the input's possible range [y_min, y_max]; windowing the two extremes
    gives exactly those bounds, whatever the VOI LUT function.
    """
    for keyword in ("WindowCenter", "WindowWidth"):  # pydicom would only say that str < int failed
        value = ds[keyword].value
        first = value[0] if isinstance(value, MultiValue) else value
        try:
            float(first)
        except (TypeError, ValueError):
            raise _FieldError(f"{keyword} is not a number") from None
        if keyword == "WindowWidth" and float(first) < 1:
            raise _FieldError("WindowWidth must be at least 1")
    windowed = apply_windowing(np.asarray(values, dtype=np.float64), ds)
    lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)
    return between(windowed, float(lo), float(hi))


def _lut_range(lut: Callable, sequence_item: Dataset) -> tuple[float, float]:
    """Output range of a LUT table, from its own entries (descriptor bit depths are unreliable)."""
    entries, first = int(sequence_item.LUTDescriptor[0]) or 2**16, int(sequence_item.LUTDescriptor[1])
    table = lut(np.arange(first, first + entries))
    return float(table.min()), float(table.max())


def _bits_range(ds: Dataset) -> tuple[float, float]:
    bits = int(ds.BitsStored)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.get("PixelRepresentation", 0) == 1 else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope") or 1), float(ds.get("RescaleIntercept") or 0)
    return tuple(sorted((lo * slope + intercept, hi * slope + intercept)))


def _to_unit(stored: np.ndarray, ds: Dataset, meta: ImageMeta, path: Path) -> np.ndarray:
    """Stored values to [0, 1] the way a DICOM display would, then invert MONOCHROME1.

    Normalised by the VOI LUT table's range or the window, else by the BitsStored range through
    the rescale, or (Modality LUT table) the table's range: fixed per device, never per image.
    """
    if stored.ndim == 3:  # colour (pydicom returns RGB for RGB and YBR): no LUTs apply
        return luma(between(stored, *_bits_range(ds)))
    has_modality = ds.get("ModalityLUTSequence") or float(ds.get("RescaleSlope") or 1) != 1 or float(
        ds.get("RescaleIntercept") or 0
    ) != 0
    values = apply_modality_lut(stored, ds) if has_modality else stored
    if meta.normalization == "voi_lut":
        pixels = between(apply_voi(values, ds), *_lut_range(lambda x: apply_voi(x, ds), ds.VOILUTSequence[0]))
    elif meta.normalization == "window":
        pixels = _window(values, ds)
    elif meta.normalization == "modality_lut":
        pixels = between(values, *_lut_range(lambda x: apply_modality_lut(x, ds), ds.ModalityLUTSequence[0]))
    else:
        pixels = between(values, *_bits_range(ds))
    if meta.inverted:
        np.subtract(1.0, pixels, out=pixels)
    padding = _padding(stored, ds)
    if padding is not None:
        pixels[padding] = 0.0
    return pixels


def _padding(stored: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Where the stored values are PixelPaddingValue (through PixelPaddingRangeLimit when set)."""
    value = ds.get("PixelPaddingValue")
    if value is None or stored.ndim != 2:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    lo, hi = (int(value), int(value)) if limit is None else sorted((int(value), int(limit)))
    return (stored >= lo) & (stored <= hi)


def read(path: Path, frame: int | None, max_pixels: int) -> Image:
    ds = _header(path)
    meta = _parsed(path, "header value", _meta, path, ds)
    index = check_frame(path, frame, meta.frames)
    check_shape(path, meta.shape, max_pixels)
    if meta.photometric not in _MONOCHROME and int(ds.get("SamplesPerPixel") or 1) != 3:
        raise ImageReadError(f"unsupported PhotometricInterpretation {meta.photometric!r}", path=path)
    try:
        with _quiet():
            stored = pixel_array(path, index=index)
    except Exception as err:  # decoder plugins raise many types for corrupt or unsupported data
        raise ImageReadError(f"cannot decode the pixel data: {_pixel_fault(meta)}", path=path) from err
    if stored.shape[:2] != meta.shape:
        raise ImageReadError(f"decoded shape {stored.shape} does not match Rows x Columns {meta.shape}", path=path)
    with _quiet():
        pixels = _parsed(path, "rescale / LUT / window value", _to_unit, stored, ds, meta, path)
    return Image(pixels=pixels, meta=meta)
