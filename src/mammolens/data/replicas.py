"""Replicas of public mammography sets' layouts, written on the fly: the real files cannot be shipped.

Each writer lays out exactly the file names, table columns and DICOM tags its set documents, with
small synthetic pixels, so the adapters are tested against the layout researchers actually have
(and the archive benchmark can write a VinDr-sized tree): VinDr-Mammo, RSNA Screening Mammography
2023, CMMD (TCIA/NBIA) and INbreast. Values follow each set's own spelling ("BI-RADS 4",
"DENSITY C", "['Mass']", "4c", SCT view codes); a writer returns the truth it wrote, so tests
compare the adapter's manifest with it rather than with constants. Writing INbreast's .xls needs
``xlwt`` (a dev dependency); CMMD's .xlsx ``openpyxl``.
"""

from __future__ import annotations

import csv
import hashlib
import plistlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

COMPRESSIONS = ("none", "rle", "j2k")
SIDES_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


@dataclass
class Truth:
    """What a writer put on disk, one entry per image, in the adapter's terms."""

    root: Path
    images: list[dict[str, Any]] = field(default_factory=list)  # file, patient, exam, laterality, view, ...


def film(rng: np.random.Generator, height: int, width: int, laterality: str, *, bits: int = 12,
         lesion: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A uint16 breast-like film: a half-ellipse of smooth texture on the chest-wall side, black outside.

    Cheap at full-field size (noise drawn at 1/32 and upsampled), so archive-sized trees are quick to write;
    ``lesion`` (x0, y0, x1, y1) is drawn as a brighter blob inside that box.
    """
    top = (1 << bits) - 1
    small = rng.random((max(2, height // 32), max(2, width // 32))).astype(np.float32)
    texture = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    rows, cols = np.ogrid[:height, :width]
    rows, cols = rows.astype(np.float32), cols.astype(np.float32)
    depth = cols if laterality == "L" else (width - 1 - cols)
    breast = (depth / (0.8 * width)) ** 2 + ((rows - height / 2) / (0.48 * height)) ** 2 <= 1
    img = np.where(breast, np.float32(0.25) + np.float32(0.35) * np.clip(texture, 0, 1), np.float32(0))
    if lesion is not None:
        x0, y0, x1, y1 = lesion
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max(1.0, (x1 - x0) / 2), max(1.0, (y1 - y0) / 2)
        img = np.where(((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1, np.float32(0.9), img)
    return np.round(img * top).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray, *, compression: str = "none", bits: int = 12,
                photometric: str = "MONOCHROME2", **tags: Any) -> Path:
    """A mammography DICOM (Digital Mammography X-Ray Image Storage) with the given tags.

    ``compression``: none (explicit VR little endian), rle (RLE Lossless) or j2k (JPEG 2000 lossless,
    via pylibjpeg-openjpeg). A tag given as ``None`` is left out; a ``ViewCodeSequence`` is given as
    a list of (CodeValue, CodingSchemeDesignator, CodeMeaning or None) tuples.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    mammo = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = mammo
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = mammo
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    codes = tags.pop("ViewCodeSequence", None)
    for key, value in tags.items():
        if value is not None:
            setattr(ds, key, value)
    if codes is not None:
        items = []
        for value, scheme, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = value, scheme
            if meaning is not None:
                item.CodeMeaning = meaning
            items.append(item)
        ds.ViewCodeSequence = DicomSequence(items)
    ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, bits)
    if compression == "rle":
        ds.compress(RLELossless)  # pylibjpeg-rle when installed (much faster), else pydicom's own encoder
    elif compression == "j2k":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _hex(*parts: Any) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _compression(compression: str | Sequence[str], k: int) -> str:
    return compression if isinstance(compression, str) else compression[k % len(compression)]


def _write_csv(path: Path, header: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------- VinDr-Mammo
VINDR_BREAST_COLUMNS = ("study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                        "breast_birads", "breast_density", "split")
VINDR_FINDING_COLUMNS = ("study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                         "breast_birads", "breast_density", "finding_categories", "finding_birads",
                         "xmin", "ymin", "xmax", "ymax", "split")


def write_vindr(root: str | Path, n_exams: int = 4, *, size: tuple[int, int] = (96, 80), seed: int = 0,
                compression: str | Sequence[str] = "none", test_every: int = 4) -> Truth:
    """``images/<study_id>/<image_id>.dicom`` (four views per exam) and both annotation CSVs.

    ``size`` is (height, width); every ``test_every``-th exam is in the official test split; every
    second exam has a mass (BI-RADS 4) in its right breast, drawn in both views, and exam 0's right CC
    view a calcification (in its MLO view listed as calcification and mass). ``compression`` may list kinds to cycle through per image.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    breast_rows: list[dict[str, Any]] = []
    finding_rows: list[dict[str, Any]] = []
    truth = Truth(root)
    k = 0
    for e in range(n_exams):
        study, series = _hex("study", seed, e), _hex("series", seed, e)
        split = "test" if test_every and e % test_every == test_every - 1 else "training"
        density = "ABCD"[e % 4]
        for side, view in SIDES_VIEWS:
            image_id = _hex("image", seed, e, side, view)
            sick = e % 2 == 1 and side == "R"
            boxes = [("['Mass']", "BI-RADS 4", (width // 4, height // 3, width // 4 + width // 8, height // 3 + height // 8))] if sick else []
            if e == 0 and side == "R":  # a calcification; in the MLO view also read as a mass
                both = "['Suspicious Calcification', 'Mass']"
                boxes.append((both if view == "MLO" else "['Suspicious Calcification']", "BI-RADS 3", (10, 10, 20, 24)))
            birads = "BI-RADS 4" if sick else ("BI-RADS 3" if boxes else f"BI-RADS {1 + e % 2}")
            pixels = film(rng, height, width, side, lesion=boxes[0][2] if boxes else None)
            path = write_dicom(root / "images" / study / f"{image_id}.dicom", pixels,
                               compression=_compression(compression, k), ImageLaterality=side, ViewPosition=view,
                               PatientID=f"VDR-{e:05d}", PatientName="Anon^VinDr")
            k += 1
            common = {"study_id": study, "series_id": series, "image_id": image_id, "laterality": side,
                      "view_position": view, "height": height, "width": width, "breast_birads": birads,
                      "breast_density": f"DENSITY {density}", "split": split}
            breast_rows.append(common)
            if boxes:
                for categories, finding_birads, (x0, y0, x1, y1) in boxes:
                    finding_rows.append({**common, "finding_categories": categories, "finding_birads": finding_birads,
                                         "xmin": f"{x0:.2f}", "ymin": f"{y0:.2f}", "xmax": f"{x1:.2f}", "ymax": f"{y1:.2f}"})
            else:
                finding_rows.append({**common, "finding_categories": "['No Finding']", "finding_birads": "",
                                     "xmin": "", "ymin": "", "xmax": "", "ymax": ""})
            truth.images.append({"file": str(path), "patient": study, "exam": study, "laterality": side, "view": view,
                                 "density": density, "birads": birads.split()[-1], "split": split,
                                 "boxes": [b[2] for b in boxes]})
    _write_csv(root / "breast-level_annotations.csv", VINDR_BREAST_COLUMNS, breast_rows)
    _write_csv(root / "finding_annotations.csv", VINDR_FINDING_COLUMNS, finding_rows)
    return truth


# ------------------------------------------------------------------------------------------ RSNA
RSNA_COLUMNS = ("site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "invasive",
                "BIRADS", "implant", "density", "machine_id", "difficult_negative_case")


def write_rsna(root: str | Path, n_patients: int = 4, *, size: tuple[int, int] = (96, 80), seed: int = 0,
               compression: str | Sequence[str] = ("j2k", "none")) -> Truth:
    """``train.csv`` and ``train_images/<patient_id>/<image_id>.dcm``, four views per patient.

    Patient 1 has a cancer in the left breast (biopsy, invasive); every third patient's density is
    empty and BIRADS is empty for patients with cancer, as in the competition's table; every other
    image is JPEG 2000 by default, as many of the real files are.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    rows: list[dict[str, Any]] = []
    truth = Truth(root)
    k = 0
    for p in range(n_patients):
        patient = 10006 + 7919 * p
        for side, view in SIDES_VIEWS:
            image_id = 462822612 + 104729 * k
            cancer = int(p == 1 and side == "L")
            density = "" if p % 3 == 2 else "ABCD"[p % 4]
            birads = "" if p == 1 else ("1", "0", "2")[p % 3]
            path = write_dicom(root / "train_images" / str(patient) / f"{image_id}.dcm",
                               film(rng, height, width, side), compression=_compression(compression, k),
                               photometric="MONOCHROME1" if p % 2 else "MONOCHROME2", PatientID=str(patient),
                               ImageLaterality=side, ViewPosition=view)
            k += 1
            rows.append({"site_id": 1 + p % 2, "patient_id": patient, "image_id": image_id, "laterality": side,
                         "view": view, "age": f"{50 + p}.0", "cancer": cancer, "biopsy": cancer, "invasive": cancer,
                         "BIRADS": birads, "implant": 0, "density": density, "machine_id": 49,
                         "difficult_negative_case": "False"})
            truth.images.append({"file": str(path), "patient": str(patient), "exam": str(patient), "laterality": side,
                                 "view": view, "density": density, "birads": birads, "cancer": cancer})
    _write_csv(root / "train.csv", RSNA_COLUMNS, rows)
    return truth


# ------------------------------------------------------------------------------------------ CMMD
CMMD_CLINICAL_COLUMNS = ("ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype")
NBIA_COLUMNS = ("Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID", "Study UID",
                "Study Description", "Study Date", "Series Description", "Manufacturer", "Modality", "SOP Class Name",
                "SOP Class UID", "Number of Images", "File Size", "File Location", "Download Timestamp")
CMMD_VIEW_CODES = {"CC": ("399162004", "SCT", "cranio-caudal"), "MLO": ("399368009", "SCT", "medio-lateral oblique")}


def write_cmmd(root: str | Path, n_patients: int = 3, *, size: tuple[int, int] = (96, 80), seed: int = 0,
               compression: str | Sequence[str] = "none", backslashes: bool = True) -> Truth:
    """``CMMD_clinicaldata_revision.xlsx``, ``metadata.csv`` and the NBIA tree ``CMMD/<ID1>/<study>/<series>/1-N.dcm``.

    One clinical row per labelled breast (patient 0 has both breasts labelled, the others one);
    ViewPosition is empty and the view is in ViewCodeSequence only (from the third image on its
    CodeMeaning is left out, so only the SCT code tells); ``backslashes`` writes File Location the
    way NBIA's Windows client does (``.\\CMMD\\D1-0001\\...``).
    """
    from openpyxl import Workbook

    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    clinical: list[tuple[Any, ...]] = []
    metadata: list[dict[str, Any]] = []
    truth = Truth(root)
    k = 0
    for p in range(n_patients):
        subject = f"D1-{p + 1:04d}"
        study_uid, series_uid = f"1.3.6.1.4.1.9590.100.1.2.{1000 + p}", f"1.3.6.1.4.1.9590.100.1.2.{5000 + p}"
        labelled = {"L": "Malignant", "R": "Benign"} if p == 0 else {"LR"[p % 2]: ("Benign", "Malignant")[p % 2]}
        for side, cls in labelled.items():
            abnormality = ("calcification", "mass", "both")[p % 3]
            clinical.append((subject, side, 40 + p, 2, abnormality, cls, "Luminal A" if cls == "Malignant" else None))
        rel = Path("CMMD") / subject / f"07-18-2010-NA-NA-{79377 + p}" / f"1.000000-NA-{70244 + p}"
        n = 0
        for side, view in SIDES_VIEWS:
            n += 1
            code = CMMD_VIEW_CODES[view]
            path = write_dicom(root / rel / f"1-{n}.dcm", film(rng, height, width, side),
                               compression=_compression(compression, k), PatientID=subject, ImageLaterality=side,
                               ViewPosition="", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                               ViewCodeSequence=[(code[0], code[1], code[2] if k < 2 else None)])
            k += 1
            truth.images.append({"file": str(path), "patient": subject, "exam": study_uid, "laterality": side,
                                 "view": view, "pathology": labelled.get(side, "").lower()})
        location = "." + "".join(("\\" if backslashes else "/") + part for part in rel.parts)
        metadata.append({"Series UID": series_uid, "Collection": "CMMD", "3rd Party Analysis": "NO",
                         "Data Description URI": "https://doi.org/10.7937/tcia.eqde-4b16", "Subject ID": subject,
                         "Study UID": study_uid, "Study Description": "", "Study Date": "07-18-2010",
                         "Series Description": "", "Manufacturer": "GE MEDICAL SYSTEMS", "Modality": "MG",
                         "SOP Class Name": "Digital Mammography X-Ray Image Storage - For Presentation",
                         "SOP Class UID": "1.2.840.10008.5.1.4.1.1.1.2", "Number of Images": n,
                         "File Size": "1 MB", "File Location": location, "Download Timestamp": "2023-01-01T00:00:00"})
    book = Workbook()
    sheet = book.active
    sheet.append(CMMD_CLINICAL_COLUMNS)
    for row in clinical:
        sheet.append(row)
    book.save(root / "CMMD_clinicaldata_revision.xlsx")
    _write_csv(root / "metadata.csv", NBIA_COLUMNS, metadata)
    return truth


# --------------------------------------------------------------------------------------- INbreast
INBREAST_COLUMNS = ("Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR",
                    "Bi-Rads", "Mass ", "Micros", "Distortion", "Asymmetry", "Findings Notes (in Portuguese)",
                    "Other Notes", "Other Annotations", "Lesion Annotation Status", "Pectoral Muscle Annotation")


def write_inbreast(root: str | Path, n_patients: int = 3, *, size: tuple[int, int] = (96, 80), seed: int = 0,
                   compression: str | Sequence[str] = "none") -> Truth:
    """``INbreast.xls`` (two footer rows), ``AllDICOMs/<File Name>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm``, ``AllXML/<File Name>.xml``.

    Patient 0 has a mass (a polygon ROI) and a calcification (a one-point ROI) in its right CC view;
    BI-RADS is written as the xls does (numbers, and text such as "4c"); the patient key is the hash
    in the DICOM names, since the xls's Patient ID column is "removed".
    """
    import xlwt

    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    book = xlwt.Workbook()
    sheet = book.add_sheet("Sheet1")
    for c, name in enumerate(INBREAST_COLUMNS):
        sheet.write(0, c, name)
    truth = Truth(root)
    r = 0
    for p in range(n_patients):
        patient = _hex("inbreast", seed, p)[:16]
        for side, view in SIDES_VIEWS:
            r += 1
            file_name = 20586908 + 131 * r
            birads = "4c" if p == 0 and side == "R" else (1.0, 2.0)[p % 2]
            rois = []
            if p == 0 and side == "R" and view == "CC":
                rois = [("Mass", [(20.5, 30.0), (40.0, 28.5), (44.0, 50.0), (22.0, 52.0)]), ("Calcification", [(60.0, 40.0)])]
            pixels = film(rng, height, width, side, lesion=(20, 28, 44, 52) if rois else None)
            dicom = root / "AllDICOMs" / f"{file_name}_{patient}_MG_{side}_{'ML' if view == 'MLO' else view}_ANON.dcm"
            write_dicom(dicom, pixels, compression=_compression(compression, r), ImageLaterality=side,
                        ViewPosition=view, PatientID=patient)
            if rois:
                _write_osirix_xml(root / "AllXML" / f"{file_name}.xml", rois)
            values = ("removed", "removed", side, view, 201001 + p, file_name, float(1 + (p + r) % 4), birads,
                      "X" if rois else "", "X" if rois else "", "", "", "", "", "", "", "")
            for c, value in enumerate(values):
                sheet.write(r, c, value)
            truth.images.append({"file": str(dicom), "patient": patient, "exam": f"{patient}-{201001 + p}",
                                 "laterality": side, "view": view, "density": "ABCD"[(p + r) % 4],
                                 "birads": str(birads).removesuffix(".0"), "rois": rois, "file_name": file_name})
    sheet.write(r + 2, 0, "")  # the real file ends with an empty row and a totals row
    sheet.write(r + 3, 0, "Total")
    sheet.write(r + 3, 5, r)
    book.save(str(root / "INbreast.xls"))
    return truth


def _write_osirix_xml(path: Path, rois: list[tuple[str, list[tuple[float, float]]]]) -> None:
    """OsiriX's plist: Images[0].ROIs[*] with Name, NumberOfPoints and Point_px strings "(x, y)"."""
    items = [{"Area": 0.0, "Center": "(0.000000, 0.000000, 0.000000)", "IndexInImage": i, "Name": name,
              "NumberOfPoints": len(points), "Point_mm": [f"({x:.6f}, {y:.6f}, 0.000000)" for x, y in points],
              "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in points], "Type": 15 if len(points) > 2 else 19}
             for i, (name, points) in enumerate(rois)]
    doc = {"Images": [{"ImageHeight": 0, "ImageIndex": 0, "ImageWidth": 0, "NumberOfROIs": len(items), "ROIs": items}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(plistlib.dumps(doc, fmt=plistlib.FMT_XML))


WRITERS = {"vindr": write_vindr, "rsna": write_rsna, "cmmd": write_cmmd, "inbreast": write_inbreast}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mammolens.data.replicas KIND OUT [--n N] [--size H W] [--compression none rle j2k]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mammolens.data.replicas", description=main.__doc__)
    parser.add_argument("kind", choices=sorted(WRITERS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=4, help="exams (VinDr) or patients (the others)")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 80), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--compression", nargs="+", default=["none"], choices=COMPRESSIONS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    truth = WRITERS[args.kind](args.out, args.n, size=tuple(args.size), seed=args.seed, compression=args.compression)
    print(f"wrote {len(truth.images)} images of a {args.kind} replica to {truth.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
