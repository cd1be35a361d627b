"""mammolens.io: every format written on the fly, and every bad input a user can hand us."""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from dicom_fixtures import PATIENT_ID, PATIENT_NAME, dicom_dataset, write_dicom
from PIL import Image as PILImage
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing, get_decoder
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from mammolens.io import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    Image,
    ImageMeta,
    read_image,
    read_meta,
)
from mammolens.utils.errors import ConfigError, ImageReadError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- fixture writers


def write_encapsulated(path: Path, arr: np.ndarray, syntax, frame_bytes: bytes, bits: int) -> Path:
    ds = dicom_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = encapsulate([frame_bytes])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_pgm(path: Path, arr: np.ndarray, maxval: int = 255) -> Path:
    body = arr.astype(">u2" if maxval > 255 else "u1").tobytes()
    path.write_bytes(b"P5\n# written by hand\n%d %d\n%d\n" % (arr.shape[1], arr.shape[0], maxval) + body)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature + IHDR claiming width x height, with a tiny IDAT: no big buffer."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


def ramp(shape=(12, 10), maxval=255, dtype=np.uint8) -> np.ndarray:
    """All values 0..maxval appear (corners are the extremes), so exact mappings are checked."""
    n = shape[0] * shape[1]
    return np.linspace(0, maxval, n).round().astype(dtype).reshape(shape)


def assert_read_error(path: Path, *fragments: str, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return info.value


# ---------------------------------------------------------------- raster formats


def test_pgm_p5_8bit_written_by_hand(tmp_path):
    arr = ramp()
    image = read_image(write_pgm(tmp_path / "mdb001.pgm", arr))
    assert isinstance(image, Image) and isinstance(image.meta, ImageMeta)
    assert image.pixels.dtype == np.float32 and image.pixels.shape == arr.shape
    np.testing.assert_array_equal(image.pixels, arr.astype(np.float32) / 255)
    assert image.meta.format == "pgm" and image.meta.shape == arr.shape
    assert image.meta.dtype == "uint8" and image.meta.bits_stored == 8
    assert (image.meta.photometric, image.meta.laterality, image.meta.transfer_syntax) == ("", "", "")


def test_pgm_16bit_keeps_precision(tmp_path):
    arr = ramp(maxval=65535, dtype=np.uint16)
    arr[0, 1] = 1  # one step above black must survive
    image = read_image(write_pgm(tmp_path / "film.pgm", arr, maxval=65535))
    np.testing.assert_allclose(image.pixels, arr / 65535, atol=1e-7)
    assert image.pixels[0, 1] > 0 and image.meta.dtype == "uint16"


@pytest.mark.parametrize(("dtype", "maxval"), [(np.uint8, 255), (np.uint16, 65535)])
def test_png_8_and_16_bit(tmp_path, dtype, maxval):
    arr = ramp(maxval=maxval, dtype=dtype)
    if dtype is np.uint16:
        arr[0, 1] = 1  # an 8-bit round trip would lose this
    path = tmp_path / "img.png"
    PILImage.fromarray(arr).save(path)
    image = read_image(path)
    np.testing.assert_allclose(image.pixels, arr / maxval, atol=1e-7)
    assert image.meta.format == "png" and image.meta.dtype == np.dtype(dtype).name
    assert image.meta.bits_stored == np.dtype(dtype).itemsize * 8
    assert image.pixels.min() == 0 and image.pixels.max() == 1


def test_rgb_and_rgba_become_luma_grey(tmp_path):
    grey = ramp()
    rgb = np.stack([grey, grey, grey], axis=-1)
    PILImage.fromarray(rgb).save(tmp_path / "grey_as_rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "grey_as_rgb.png").pixels, grey / 255, atol=1e-6)

    colour = RNG.integers(0, 256, (8, 6, 4), dtype=np.uint8)
    PILImage.fromarray(colour, mode="RGBA").save(tmp_path / "colour.png")
    expected = (0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2]) / 255
    image = read_image(tmp_path / "colour.png")
    assert image.pixels.ndim == 2
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)


def test_tiff_uint16_float_and_multipage(tmp_path):
    arr = ramp(maxval=65535, dtype=np.uint16)
    PILImage.fromarray(arr).save(tmp_path / "a.tif")
    image = read_image(tmp_path / "a.tif")
    assert image.meta.format == "tiff" and image.meta.dtype == "uint16"
    np.testing.assert_allclose(image.pixels, arr / 65535, atol=1e-7)

    signed = (arr.astype(np.int32) - 40000).astype(np.int16)  # values < 0: no fixed range
    tifffile.imwrite(tmp_path / "signed.tiff", signed)  # Pillow would widen it to int32
    image = read_image(tmp_path / "signed.tiff")
    assert image.meta.dtype == "int16" and image.meta.normalization == "minmax"
    assert image.pixels.min() == 0 and image.pixels.max() == 1

    floats = RNG.random((6, 5), dtype=np.float32) * 0.5
    PILImage.fromarray(floats).save(tmp_path / "f.tiff")
    image = read_image(tmp_path / "f.tiff")
    np.testing.assert_array_equal(image.pixels, floats)
    assert image.meta.normalization == "none"

    pages = [PILImage.fromarray(np.full((4, 3), v, np.uint8)) for v in (10, 20, 30)]
    pages[0].save(tmp_path / "stack.tiff", save_all=True, append_images=pages[1:])
    assert read_meta(tmp_path / "stack.tiff").frames == 3
    assert read_image(tmp_path / "stack.tiff", frame=2).pixels[0, 0] == pytest.approx(30 / 255)
    assert_read_error(tmp_path / "stack.tiff", "3 frames", "frame=")
    assert_read_error(tmp_path / "stack.tiff", "frame 3", "out of range", frame=3)


def test_jpeg_grey_and_colour(tmp_path):
    arr = np.kron(np.array([[0, 255], [128, 64]], np.uint8), np.ones((8, 8), np.uint8))
    PILImage.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    image = read_image(tmp_path / "a.jpg")
    assert image.meta.format == "jpeg" and image.pixels.shape == arr.shape
    np.testing.assert_allclose(image.pixels, arr / 255, atol=0.03)  # lossy

    PILImage.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "b.jpeg", quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "b.jpeg").pixels, arr / 255, atol=0.03)


def test_mislabelled_raster_is_read_by_content(tmp_path):
    arr = ramp()
    PILImage.fromarray(arr).save(tmp_path / "really_png.jpg", format="PNG")
    image = read_image(tmp_path / "really_png.jpg")
    assert image.meta.format == "png"
    np.testing.assert_array_equal(image.pixels, arr / np.float32(255))


def test_uppercase_extension(tmp_path):
    PILImage.fromarray(ramp()).save(tmp_path / "FILM.PNG")
    assert read_image(tmp_path / "FILM.PNG").meta.format == "png"


# ---------------------------------------------------------------- npy


def test_npy_integer_divided_by_dtype_max(tmp_path):
    for dtype in (np.uint8, np.uint16, np.bool_):
        arr = ramp(maxval=np.iinfo(dtype).max if dtype is not np.bool_ else 1, dtype=dtype)
        np.save(tmp_path / "a.npy", arr)
        image = read_image(tmp_path / "a.npy")
        scale = 1 if dtype is np.bool_ else np.iinfo(dtype).max
        np.testing.assert_allclose(image.pixels, arr / scale, atol=1e-7)
        assert image.meta.format == "npy" and image.meta.normalization == "dtype_max"
        assert image.meta.dtype == np.dtype(dtype).name


def test_npy_float_in_unit_range_is_kept_and_outside_is_scaled_and_flagged(tmp_path):
    inside = RNG.random((5, 4)).astype(np.float64)
    np.save(tmp_path / "in.npy", inside)
    image = read_image(tmp_path / "in.npy")
    np.testing.assert_array_equal(image.pixels, inside.astype(np.float32))
    assert image.meta.normalization == "none" and image.pixels.dtype == np.float32

    outside = inside * 3000 - 1000
    np.save(tmp_path / "out.npy", outside.astype(np.float32))
    image = read_image(tmp_path / "out.npy")
    assert image.meta.normalization == "minmax"
    np.testing.assert_allclose(image.pixels, (outside - outside.min()) / np.ptp(outside), atol=1e-6)


def test_npy_stack_reads_one_frame(tmp_path):
    stack = np.stack([np.full((6, 5), v, np.uint8) for v in (0, 100, 255)])
    np.save(tmp_path / "stack.npy", stack)
    meta = read_meta(tmp_path / "stack.npy")
    assert meta.frames == 3 and meta.shape == (6, 5)
    image = read_image(tmp_path / "stack.npy", frame=1)
    assert image.pixels.shape == (6, 5) and image.pixels[0, 0] == pytest.approx(100 / 255)
    assert not isinstance(image.pixels, np.memmap)
    assert_read_error(tmp_path / "stack.npy", "3 frames", "frame=")
    assert_read_error(tmp_path / "stack.npy", "frame 5", "out of range", frame=5)
    assert_read_error(tmp_path / "stack.npy", "frame -1", "out of range", frame=-1)


def test_npy_bad_arrays(tmp_path):
    cases = {
        "nan.npy": (np.array([[0.1, np.nan], [0.2, 0.3]]), "nan or infinite"),
        "inf.npy": (np.array([[0.1, np.inf], [0.2, 0.3]], np.float32), "nan or infinite"),
        "line.npy": (np.zeros(7, np.uint8), "expected (h, w)"),
        "empty.npy": (np.zeros((0, 4), np.uint8), "zero-size axis"),
        "complex.npy": (np.zeros((3, 3), np.complex64), "dtype complex64"),
    }
    for name, (arr, problem) in cases.items():
        np.save(tmp_path / name, arr)
        assert_read_error(tmp_path / name, problem)
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    assert_read_error(tmp_path / "objects.npy", "invalid")
    full = tmp_path / "full.npy"
    np.save(full, np.zeros((64, 64), np.uint16))
    (tmp_path / "cut.npy").write_bytes(full.read_bytes()[:500])
    assert_read_error(tmp_path / "cut.npy", "truncated")


# ---------------------------------------------------------------- DICOM


def test_dicom_8bit(tmp_path):
    arr = ramp()
    image = read_image(write_dicom(tmp_path / "a.dcm", arr, PixelSpacing=[0.07, 0.07]))
    np.testing.assert_allclose(image.pixels, arr / 255, atol=1e-7)
    meta = image.meta
    assert (meta.format, meta.dtype, meta.bits_stored, meta.photometric) == ("dicom", "uint8", 8, "MONOCHROME2")
    assert meta.pixel_spacing_mm == (0.07, 0.07) and meta.normalization == "bits_stored"
    assert meta.transfer_syntax == pydicom.uid.ExplicitVRLittleEndian
    assert not meta.windowed and not meta.inverted


def test_dicom_12bit_with_rescale_uses_bits_stored_range(tmp_path):
    arr = ramp(maxval=4095, dtype=np.uint16)
    path = write_dicom(tmp_path / "r.dcm", arr, bits=12, RescaleSlope=2, RescaleIntercept=-100, ImagerPixelSpacing=[0.1, 0.1])
    image = read_image(path)
    modality = arr * 2.0 - 100  # the range [0, 4095] maps to [-100, 8090]
    np.testing.assert_allclose(image.pixels, (modality + 100) / 8190, atol=1e-6)
    assert image.meta.bits_stored == 12 and image.meta.pixel_spacing_mm == (0.1, 0.1)


def test_dicom_signed_uses_the_signed_bits_stored_range(tmp_path):
    arr = (ramp(maxval=4095, dtype=np.uint16).astype(np.int16) - 2048)
    image = read_image(write_dicom(tmp_path / "s.dcm", arr, bits=12))
    assert image.meta.dtype == "int16"
    np.testing.assert_allclose(image.pixels, (arr + 2048) / 4095, atol=1e-6)


def test_dicom_16bit_and_rle_decode_identically(tmp_path):
    arr = ramp(maxval=65535, dtype=np.uint16)
    arr[0, 1] = 1
    plain = read_image(write_dicom(tmp_path / "plain.dcm", arr))
    rle = read_image(write_dicom(tmp_path / "rle.dcm", arr, rle=True))
    np.testing.assert_allclose(plain.pixels, arr / 65535, atol=1e-7)
    np.testing.assert_array_equal(plain.pixels, rle.pixels)
    assert rle.meta.transfer_syntax == RLELossless and plain.pixels[0, 1] > 0


def test_dicom_monochrome1_is_inverted(tmp_path):
    arr = ramp(maxval=4095, dtype=np.uint16)
    image = read_image(write_dicom(tmp_path / "m1.dcm", arr, bits=12, photometric="MONOCHROME1"))
    assert image.meta.inverted and image.meta.photometric == "MONOCHROME1"
    assert image.pixels.flat[np.argmax(arr)] == 0  # brightest stored value is displayed black
    assert image.pixels.flat[np.argmin(arr)] == 1
    np.testing.assert_allclose(image.pixels, 1 - arr / 4095, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_dicom_window_matches_pydicom(tmp_path, function):
    arr = ramp(maxval=4095, dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", arr, bits=12, WindowCenter=[1500, 3000], WindowWidth=[1000, 500], VOILUTFunction=function)
    image = read_image(path)
    assert image.meta.windowed and image.meta.normalization == "window"
    ds = pydicom.dcmread(path)
    expected = apply_windowing(ds.pixel_array, ds) / 4095  # pydicom's output spans 0..2**12-1
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)
    if function != "SIGMOID":
        assert image.pixels.min() == 0 and image.pixels.max() == 1


def test_dicom_invalid_window_values(tmp_path):
    arr = ramp(maxval=4095, dtype=np.uint16)
    assert_read_error(write_dicom(tmp_path / "w0.dcm", arr, bits=12, WindowCenter=100, WindowWidth=0), "WindowWidth must be at least 1")
    path = write_dicom(tmp_path / "wx.dcm", arr, bits=12, WindowCenter=100, WindowWidth=98765)
    path.write_bytes(path.read_bytes().replace(b"98765", b"9x765"))  # not a decimal string any more
    error = assert_read_error(path, "invalid DICOM", "WindowWidth is not a number")
    assert "9x765" not in str(error)  # the field is named, its content never quoted (it could be a name)


def test_dicom_window_then_monochrome1(tmp_path):
    arr = ramp(maxval=4095, dtype=np.uint16)
    path = write_dicom(tmp_path / "w1.dcm", arr, bits=12, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096)
    image = read_image(path)
    assert image.meta.windowed and image.meta.inverted
    assert image.pixels.flat[np.argmax(arr)] == pytest.approx(0, abs=1e-3)


def test_dicom_voi_lut_sequence(tmp_path):
    arr = ramp(maxval=255, dtype=np.uint8)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new(0x00283006, "US", [4095 - 16 * v for v in range(256)])  # LUTData: 12 bits in 16
    path = write_dicom(tmp_path / "lut.dcm", arr, VOILUTSequence=[item], WindowCenter=128, WindowWidth=10)
    image = read_image(path)
    assert image.meta.normalization == "voi_lut" and image.meta.windowed
    table = np.array(item.LUTData, float)
    np.testing.assert_allclose(image.pixels, (table[arr] - table.min()) / np.ptp(table), atol=1e-6)


@pytest.mark.parametrize(
    ("tags", "laterality", "view"),
    [
        ({"ImageLaterality": "R", "Laterality": "L", "ViewPosition": "CC"}, "R", "CC"),
        ({"Laterality": "L", "PatientOrientation": "MLO"}, "L", "MLO"),  # CBIS-DDSM's spelling
        ({"ViewPosition": "RMLO"}, "R", "MLO"),
        ({"ViewPosition": "LEFT_CC"}, "L", "CC"),
        ({"PatientOrientation": ["A", "R"]}, "", ""),  # directions, not a side
        ({"ImageLaterality": "B"}, "", ""),
        ({"ViewCodeSequence": [Dataset()]}, "", ""),
    ],
)
def test_dicom_laterality_and_view(tmp_path, tags, laterality, view):
    meta = read_meta(write_dicom(tmp_path / "lat.dcm", ramp(), **tags))
    assert (meta.laterality, meta.view) == (laterality, view)


def test_dicom_view_code_sequence(tmp_path):
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399368009", "SCT", "medio-lateral oblique"
    assert read_meta(write_dicom(tmp_path / "v.dcm", ramp(), ViewCodeSequence=[code])).view == "MLO"


def test_dicom_never_exposes_patient_identifiers(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", ramp(), Laterality="L", ViewPosition="CC")
    for meta in (read_meta(path), read_image(path).meta):
        text = repr(meta) + repr(dataclasses.asdict(meta))
        for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19600101", "ACC-777", "Saint Nowhere"):
            assert secret not in text


def test_dicom_multiframe(tmp_path):
    stack = np.stack([np.full((5, 4), v, np.uint16) for v in (0, 1000, 4095)])
    path = write_dicom(tmp_path / "mf.dcm", stack, bits=12)
    assert read_meta(path).frames == 3
    assert read_image(path, frame=1).pixels[0, 0] == pytest.approx(1000 / 4095)
    assert_read_error(path, "3 frames", "frame=")
    assert_read_error(path, "frame 3", "out of range", frame=3)


def test_dicom_without_extension_or_named_by_uid(tmp_path):
    arr = ramp()
    for name in ("IM0001", "1.2.840.113619.2.55.3.604688119"):
        image = read_image(write_dicom(tmp_path / name, arr))
        assert image.meta.format == "dicom"
        np.testing.assert_allclose(image.pixels, arr / 255, atol=1e-7)


def test_dicom_compressed_with_pillow_codecs(tmp_path):
    for syntax in (JPEGBaseline8Bit, JPEG2000Lossless):
        assert get_decoder(syntax).is_available, f"no pydicom decoder for {syntax.name}"
    arr = ramp(maxval=4095, dtype=np.uint16)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG2000", no_jp2=True)  # reversible: lossless
    image = read_image(write_encapsulated(tmp_path / "j2k.dcm", arr, JPEG2000Lossless, buf.getvalue(), 12))
    np.testing.assert_allclose(image.pixels, arr / 4095, atol=1e-7)

    grey = np.kron(np.array([[0, 255], [128, 64]], np.uint8), np.ones((8, 8), np.uint8))
    buf = io.BytesIO()
    PILImage.fromarray(grey).save(buf, format="JPEG", quality=95)
    image = read_image(write_encapsulated(tmp_path / "jpg.dcm", grey, JPEGBaseline8Bit, buf.getvalue(), 8))
    np.testing.assert_allclose(image.pixels, grey / 255, atol=0.03)


# ---------------------------------------------------------------- bad inputs


def test_corrupt_and_truncated_dicom(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", ramp(maxval=65535, dtype=np.uint16, shape=(64, 64)))
    data = good.read_bytes()
    (tmp_path / "short_pixels.dcm").write_bytes(data[:-3000])
    assert_read_error(tmp_path / "short_pixels.dcm", "cannot decode the pixel data")
    (tmp_path / "short_header.dcm").write_bytes(data[:200])
    assert_read_error(tmp_path / "short_header.dcm")
    # an odd cut: numpy's "buffer size must be a multiple of element size" is not what the user reads
    (tmp_path / "odd_pixels.dcm").write_bytes(data[:-3001])
    error = str(assert_read_error(tmp_path / "odd_pixels.dcm", "cannot decode the pixel data", "truncated", "64x64"))
    assert "buffer size" not in error and "Error" not in error

    rle = write_dicom(tmp_path / "rle.dcm", ramp(maxval=65535, dtype=np.uint16, shape=(64, 64)), rle=True)
    data = rle.read_bytes()
    (tmp_path / "short_rle.dcm").write_bytes(data[: len(data) // 2])
    assert_read_error(tmp_path / "short_rle.dcm", "cannot decode", "RLE Lossless")


def test_dicom_without_a_decoder_is_one_line(tmp_path):
    arr = ramp(maxval=4095, dtype=np.uint16)
    path = write_encapsulated(tmp_path / "jls.dcm", arr, pydicom.uid.JPEGLSLossless, b"\xff\xd8 not really JPEG-LS", 12)
    assert_read_error(path, "cannot decode the pixel data", "JPEG-LS")


def test_single_image_accepts_frame_zero_only(tmp_path):
    PILImage.fromarray(ramp()).save(tmp_path / "one.png")
    assert read_image(tmp_path / "one.png", frame=0).pixels.shape == (12, 10)
    assert_read_error(tmp_path / "one.png", "frame 1", "1 frame(s)", frame=1)
    np.save(tmp_path / "one.npy", ramp())
    assert_read_error(tmp_path / "one.npy", "frame must be an integer", frame=1.5)


def test_dicom_header_bomb_is_rejected_before_decoding(tmp_path):
    ds = dicom_dataset()
    ds.set_pixel_data(np.zeros((4, 4), np.uint16), "MONOCHROME2", 16)
    ds.Rows = ds.Columns = 30000  # the pixel data is tiny; only the header is large
    ds.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    assert read_meta(tmp_path / "bomb.dcm").shape == (30000, 30000)
    assert_read_error(tmp_path / "bomb.dcm", "30000x30000", "max_pixels")


@pytest.mark.parametrize("suffix", [".dcm", ".png", ".jpg", ".tiff", ".pgm", ".npy"])
def test_text_file_with_image_extension(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("these are radiology notes, not pixels\n" * 20)
    assert_read_error(path, "not a")
    with pytest.raises(ImageReadError, match="not a"):
        read_meta(path)


@pytest.mark.parametrize("suffix", [".dcm", ".png", ".npy", ".jpeg"])
def test_zero_byte_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    assert_read_error(path, "empty", "0 bytes")


def test_png_bomb_rejected_from_header_without_allocating(tmp_path):
    path = write_png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert path.stat().st_size < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        error = assert_read_error(path, "30000x30000", "max_pixels")
        assert "decompression" not in str(error).lower()  # ours, not Pillow's, stopped it
        assert read_meta(path).shape == (30000, 30000)  # the header alone is fine to inspect


def test_max_pixels_is_overridable(tmp_path):
    PILImage.fromarray(ramp(shape=(20, 10))).save(tmp_path / "small.png")
    assert_read_error(tmp_path / "small.png", "20x10", "max_pixels=199", max_pixels=199)
    assert read_image(tmp_path / "small.png", max_pixels=200).pixels.shape == (20, 10)
    with pytest.raises(ConfigError, match="max_pixels"):
        read_image(tmp_path / "small.png", max_pixels=0)
    assert 4500 * 2800 < 4096 * 3328 < 5928 * 4728 < DEFAULT_MAX_PIXELS < 30000 * 30000


def test_truncated_png_and_jpeg(tmp_path):
    arr = RNG.integers(0, 256, (128, 128), dtype=np.uint8)  # noise: does not compress away
    for name in ("a.png", "a.jpg"):
        full = tmp_path / f"full_{name}"
        PILImage.fromarray(arr).save(full)
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        assert_read_error(cut, "truncated")


def test_corrupt_png_crc(tmp_path):
    PILImage.fromarray(ramp()).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(data))
    assert_read_error(tmp_path / "crc.png", "png")


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"\x00" * 300)
    error = assert_read_error(path, "unsupported file extension '.xyz'")
    for suffix in SUPPORTED_SUFFIXES:
        assert suffix in str(error)
    assert {".dcm", ".pgm", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy"} <= set(SUPPORTED_SUFFIXES)


def test_missing_file_and_directory(tmp_path):
    assert_read_error(tmp_path / "nowhere.dcm", "not found")
    with pytest.raises(ImageReadError, match="not found"):
        read_meta(tmp_path / "nowhere.png")
    (tmp_path / "folder.png").mkdir()
    assert_read_error(tmp_path / "folder.png", "not a regular file")


def test_zero_size_png_axis_is_rejected(tmp_path):
    write_png_header_only(tmp_path / "flat.png", 0, 10)
    assert_read_error(tmp_path / "flat.png")


def test_dicom_presentation_lut_inverse_inverts_monochrome2_once(tmp_path):
    arr = ramp(maxval=4095, dtype=np.uint16)
    plain = read_image(write_dicom(tmp_path / "id.dcm", arr, bits=12)).pixels
    inverse = read_image(write_dicom(tmp_path / "inv.dcm", arr, bits=12, PresentationLUTShape="INVERSE"))
    assert inverse.meta.inverted
    np.testing.assert_allclose(inverse.pixels, 1.0 - plain, atol=1e-6)
    # MONOCHROME1 + INVERSE is the pairing the DX/MG IODs require: one inversion, not two
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", arr, bits=12, photometric="MONOCHROME1",
                                PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(m1.pixels, 1.0 - plain, atol=1e-6)


@pytest.mark.parametrize("photometric, pad", [("MONOCHROME2", 4095), ("MONOCHROME1", 0)])
def test_dicom_pixel_padding_is_background_not_tissue(tmp_path, photometric, pad):
    """Padding that displays white (without this rule it reads 1.0) must read as black background."""
    arr = np.full((8, 8), 2000, np.uint16)
    arr[:, :3] = pad
    image = read_image(write_dicom(tmp_path / "pad.dcm", arr, bits=12, photometric=photometric, PixelPaddingValue=pad))
    assert (image.pixels[:, :3] == 0).all()
    assert (image.pixels[:, 3:] > 0.4).all()
    ranged = arr.copy()
    ranged[:, :3] = [[10, 11, 12]] * 8
    image = read_image(write_dicom(tmp_path / "range.dcm", ranged, bits=12, PixelPaddingValue=10,
                                   PixelPaddingRangeLimit=12))
    assert (image.pixels[:, :3] == 0).all() and (image.pixels[:, 3:] > 0.4).all()
