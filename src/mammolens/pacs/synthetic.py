"""Synthetic screening exams as a mammography unit writes them: four views (R-CC, L-CC, R-MLO, L-MLO)
per woman, Digital Mammography X-Ray Image "For Presentation", 12 bits stored in 16, uncompressed,
RLE Lossless or JPEG 2000 Lossless pixel data, invented names, IDs and dates.

The node reads these exactly as it reads a modality's images (laterality, view, windowing); the
screening-day benchmark writes a day of them (``write_day``) and pushes it into a PACS.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from mammolens.utils.errors import ConfigError

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
# SNOMED CT view codes (CID 4014) and the breast (CID 4031), as modalities write them
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
ENCODINGS = {"raw": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": JPEG2000Lossless}
# PatientOrientation per view (row direction, column direction), as in the MG IOD's examples
ORIENTATION = {("R", "CC"): ["P", "L"], ("L", "CC"): ["A", "R"], ("R", "MLO"): ["P", "F"], ("L", "MLO"): ["A", "F"]}


@dataclass(frozen=True)
class Woman:
    """The invented identity of one exam (never real people; still treated as PHI by the node)."""

    name: str
    patient_id: str
    birth_date: str
    accession: str
    study_date: str


def code_item(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def breast_pixels(rng: np.random.Generator, shape: tuple[int, int], laterality: str, lesion: bool) -> np.ndarray:
    """A breast-shaped 12-bit image (chest wall on the left for R, on the right for L), with a bright
    spiculated-ish mass when ``lesion``."""
    rows, cols = shape
    yy, xx = np.ogrid[:rows, :cols]
    cy = rows * (0.45 + 0.1 * rng.random())
    rx, ry = cols * (0.75 + 0.1 * rng.random()), rows * (0.42 + 0.05 * rng.random())
    r2 = (xx / rx) ** 2 + ((yy - cy) / ry) ** 2
    tissue = np.where(r2 < 1.0, 0.35 + 0.45 * np.sqrt(np.clip(1.0 - r2, 0, 1)), 0.0)
    small = rng.random((max(rows // 32, 2), max(cols // 32, 2)))
    texture = np.kron(small, np.ones((32, 32)))[:rows, :cols] if rows >= 64 else small.mean()
    img = tissue * (0.85 + 0.15 * texture)
    if lesion:
        ly, lx = rows * (0.3 + 0.4 * rng.random()), cols * (0.15 + 0.35 * rng.random())
        rad = max(rows, cols) * (0.03 + 0.03 * rng.random())
        img = img + 0.25 * np.exp(-(((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * rad**2))) * (tissue > 0)
    img = np.clip(img, 0, 1)
    if laterality == "L":
        img = img[:, ::-1]
    return np.round(img * 4095).astype(np.uint16)


def mg_dataset(pixels: np.ndarray, woman: Woman, study_uid: str, series_uid: str, laterality: str, view: str,
               number: int, *, encoding: str = "raw", view_position: bool = True,
               presentation: bool = True) -> Dataset:  # fmt: skip
    """One MG image with the tags a full-field digital mammography unit writes.
    ``view_position=False``: ViewPosition left empty, the view only in ViewCodeSequence (as in CMMD)."""
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown pixel encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
    ds = Dataset()
    ds.preamble = b"\0" * 128  # a Part 10 file, also when sent by STOW-RS
    ds.file_meta = FileMetaDataset()
    sop_class = MG_FOR_PRESENTATION if presentation else MG_FOR_PROCESSING
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = woman.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "091500"
    ds.AccessionNumber = woman.accession
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION" if presentation else "FOR PROCESSING"
    ds.Manufacturer, ds.ManufacturerModelName = "Synthetic Mammo Inc.", "FFDM-0"
    ds.InstitutionName, ds.ReferringPhysicianName = "Screening Centre Nowhere", ""
    ds.StationName, ds.SeriesDescription = "MAMMO1", f"{laterality} {view}"
    ds.PatientName, ds.PatientID = woman.name, woman.patient_id
    ds.PatientBirthDate, ds.PatientSex = woman.birth_date, "F"
    ds.BodyPartExamined = ds.OrganExposed = "BREAST"
    ds.AcquisitionContextSequence = Sequence([])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", number, 1
    ds.PatientOrientation = ORIENTATION[(laterality, view)]
    ds.ImageLaterality = laterality
    ds.ViewPosition = view if view_position else ""
    view_item = code_item(*VIEW_CODES[view])
    view_item.ViewModifierCodeSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([view_item])
    ds.AnatomicRegionSequence = Sequence([code_item("76752008", "Breast")])
    ds.PositionerType, ds.DistanceSourceToDetector, ds.BreastImplantPresent = "MAMMOGRAPHIC", 660, "NO"
    ds.DetectorType, ds.BurnedInAnnotation, ds.LossyImageCompression = "DIRECT", "NO", "00"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.07, 0.07]
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2047, 4096, "LINEAR"
    ds.PresentationLUTShape = "IDENTITY"
    ds.QualityControlImage, ds.AcquisitionDeviceProcessingDescription = "NO", "SYNTHETIC"
    ds.set_pixel_data(pixels, "MONOCHROME2", 16)
    ds.BitsStored, ds.HighBit = 12, 11
    if encoding != "raw":
        ds.compress(ENCODINGS[encoding], pixels)
    return ds


def synthetic_woman(rng: np.random.Generator, index: int, day: dt.date) -> Woman:
    born = day - dt.timedelta(days=int(rng.integers(50 * 365, 70 * 365)))
    return Woman(name=f"Synthetic^Woman{index:04d}", patient_id=f"SYN-{rng.integers(10**7, 10**8)}",
                 birth_date=born.strftime("%Y%m%d"), accession=f"A{rng.integers(10**6, 10**7)}",
                 study_date=day.strftime("%Y%m%d"))  # fmt: skip


def four_view_exam(rng: np.random.Generator, index: int, *, shape: tuple[int, int] = (320, 256),
                   encodings: tuple[str, ...] = ("raw",), lesion_side: str = "",
                   view_position: bool = True, day: dt.date = dt.date(2026, 12, 7)) -> list[Dataset]:  # fmt: skip
    """One woman's four views in one study, one series per view; ``encodings`` cycle over the views."""
    woman = synthetic_woman(rng, index, day)
    study = generate_uid()
    return [
        mg_dataset(breast_pixels(rng, shape, lat, lat == lesion_side), woman, study, generate_uid(), lat, view,
                   number + 1, encoding=encodings[(index + number) % len(encodings)], view_position=view_position)
        for number, (lat, view) in enumerate(VIEWS)
    ]  # fmt: skip


def screening_day(n_exams: int, *, seed: int = 0, shape: tuple[int, int] = (4096, 3328),
                  encodings: tuple[str, ...] = ("raw", "rle", "j2k"), cancer_rate: float = 0.1) -> Iterator[list[Dataset]]:  # fmt: skip
    """``n_exams`` four-view exams, one at a time (a day does not fit in memory at full-field size)."""
    rng = np.random.default_rng(seed)
    for i in range(n_exams):
        side = str(rng.choice(["L", "R"])) if rng.random() < cancer_rate else ""
        yield four_view_exam(rng, i, shape=shape, encodings=encodings, lesion_side=side)


def write_day(out: Path, n_exams: int, **options: object) -> list[Path]:
    """The day as files ``out/<exam>/<view>.dcm``; returns them in acquisition order."""
    paths = []
    for i, exam in enumerate(screening_day(n_exams, **options)):  # type: ignore[arg-type]
        folder = Path(out) / f"exam{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for ds in exam:
            path = folder / f"{ds.ImageLaterality}{ds.ViewPosition or ds.SeriesDescription[2:]}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
