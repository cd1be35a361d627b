"""CMMD, the Chinese Mammography Database (TCIA, 1,775 patients, CC BY 4.0), as NBIA downloads it.

``CMMD_clinicaldata_revision.xlsx`` has one row per labelled breast (ID1, LeftRight, Age, number,
abnormality calcification/mass/both, classification Benign/Malignant, subtype); ``metadata.csv``
(NBIA's manifest) names each series' folder in ``File Location`` (``.\\CMMD\\D1-0001\\<study>\\<series>``,
backslashes when downloaded on Windows), holding ``1-1.dcm`` .. ``1-N.dcm``. The files leave
ViewPosition empty: the view comes from ViewCodeSequence (SCT 399162004 = CC, 399368009 = MLO) and
the side from ImageLaterality, so every header is read here.

One row per image: the patient (ID1) is the split group, the NBIA study the exam. An image of a
breast the clinical table does not list keeps pathology "" (CMMD labels only the breasts it lists).
"""

from __future__ import annotations

import json
from pathlib import Path, PureWindowsPath
from typing import Any

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.adapters.tables import header_of, read_table, require_columns, summary
from mammolens.data.manifest import Manifest
from mammolens.utils.errors import DataError

CLINICAL = "CMMD_clinicaldata_revision.xlsx"
METADATA = "metadata.csv"
CLINICAL_COLUMNS = ("ID1", "LeftRight", "abnormality", "classification")
METADATA_COLUMNS = ("Subject ID", "Study UID", "File Location")
CLASSES = {"Benign": "benign", "Malignant": "malignant"}
ABNORMALITIES = {"calcification": "calc", "mass": "mass", "both": ""}


def _root(path: Path) -> Path:
    return path.parent if path.is_file() else path


def _clinical(root: Path) -> Path | None:
    named = root / CLINICAL
    if named.is_file():
        return named
    return next(iter(sorted(root.glob("CMMD_clinicaldata*.xlsx"))), None)


def detect(path: Path) -> bool:
    root = _root(path)
    return _clinical(root) is not None and (root / METADATA).is_file()


def near_miss(path: Path) -> str | None:
    root = _root(path)
    if _clinical(root) is not None and not (root / METADATA).is_file():
        return f"it has CMMD's clinical table but not NBIA's {METADATA}, which names each series' folder"
    return None


def load(path: str | Path, *, require_images: bool = True) -> SourceResult:
    """Read a CMMD download (the folder holding the clinical .xlsx and metadata.csv)."""
    root = _root(Path(path).resolve())
    clinical_path = _clinical(root)
    if clinical_path is None:
        raise DataError(f"no {CLINICAL}", path=root)
    labels = _labels(clinical_path)
    meta_path = root / METADATA
    series = read_table(meta_path)
    require_columns(series, METADATA_COLUMNS, meta_path)
    records: list[dict[str, Any]] = []
    missing: list[str] = []
    bad: list[str] = []
    used: set[tuple[str, str]] = set()
    for n, row in enumerate(series.to_dict("records"), start=2):
        where = f"{meta_path}: line {n}"
        subject, folder = row["Subject ID"], _location(root, row["File Location"], where)
        if not subject:
            raise DataError("empty Subject ID", path=where)
        files = sorted(folder.glob("*.dcm"), key=lambda p: (len(p.name), p.name)) if folder.is_dir() else []
        if not files:
            if require_images:
                raise DataError(f"File Location {row['File Location']!r}: no .dcm files in {folder}", path=where)
            missing.append(str(folder))
            continue
        for dicom in files:
            image = header_of(dicom, bad, require_images)
            side = image.laterality if image else ""
            if image and side not in ("L", "R"):
                raise DataError("ImageLaterality is empty or not L/R: the breast's side is unknown", path=dicom)
            label = labels.get((subject, side), {})
            used.add((subject, side))
            records.append({
                "sample_id": f"cmmd-{subject}-{dicom.parent.name}-{dicom.stem}",
                "source": "cmmd",
                "path": str(dicom),
                "patient_id": subject,
                "exam_id": row["Study UID"] or subject,
                "group": subject,
                "view": image.view if image else "",
                "laterality": side,
                "pathology": label.get("pathology", ""),
                "lesion_type": label.get("lesion_type", ""),
                # the finding is somewhere on the whole film (no ROI): lesion tasks leave it out, as for CBIS-DDSM
                "meta": json.dumps({"full_film": bool(label),
                                    **{k: v for k, v in label.items() if k not in ("pathology", "lesion_type")}}),
            })
    if not records:
        raise DataError("no images found through File Location", path=meta_path)
    manifest = Manifest.from_records(records, name="cmmd")
    notes = [summary(manifest)]
    unseen = sorted(f"{s} {side}" for s, side in labels if (s, side) not in used)
    if unseen:
        notes.append(f"{len(unseen)} labelled breast(s) of {clinical_path.name} have no image: {', '.join(unseen[:10])}")
    unlabelled = int((manifest.df["pathology"] == "").sum())
    if unlabelled:
        notes.append(f"{unlabelled} image(s) show a breast {clinical_path.name} does not label (pathology '')")
    if missing:
        notes.append(f"{len(missing)} series folder(s) named in {METADATA} are missing or empty")
    return SourceResult(manifest=manifest, notes=notes, missing_files=missing, bad_files=bad)


def _location(root: Path, text: str, where: str) -> Path:
    """NBIA's File Location, with / or \\ separators and a leading '.', relative to the download folder."""
    parts = [p for p in PureWindowsPath(text.strip()).parts if p not in (".", "")]
    if not parts or any(p == ".." for p in parts) or PureWindowsPath(text.strip()).is_absolute():
        raise DataError(f"File Location {text!r} is not a folder inside the download", path=where)
    return root.joinpath(*parts)


def _labels(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    df = read_table(path)
    require_columns(df, CLINICAL_COLUMNS, path)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for n, row in enumerate(df.to_dict("records"), start=2):
        where = f"{path}: row {n}"
        key = (row["ID1"], row["LeftRight"])
        if not row["ID1"] or row["LeftRight"] not in ("L", "R"):
            raise DataError(f"needs an ID1 and LeftRight L or R, got {row['ID1']!r}, {row['LeftRight']!r}", path=where)
        if row["classification"] not in CLASSES:
            raise DataError(f"classification {row['classification']!r} is not Benign or Malignant", path=where)
        if row["abnormality"] not in ABNORMALITIES:
            raise DataError(f"abnormality {row['abnormality']!r} is not one of {', '.join(ABNORMALITIES)}", path=where)
        if key in out:
            raise DataError(f"breast {key[0]} {key[1]} is listed twice", path=where)
        out[key] = {"pathology": CLASSES[row["classification"]], "lesion_type": ABNORMALITIES[row["abnormality"]],
                    "abnormality": row["abnormality"], "subtype": row.get("subtype", ""), "age": row.get("Age", "")}
    return out


ADAPTERS.register("cmmd")(
    Adapter(detect=detect, load=load, near_miss=near_miss,
            description="CMMD (TCIA): CMMD_clinicaldata_revision.xlsx + NBIA metadata.csv and CMMD/<ID1>/... DICOMs")
)
