"""RSNA Screening Mammography Breast Cancer Detection (2023): ``train_images/<patient_id>/<image_id>.dcm``.

``train.csv``: one row per image (site_id, patient_id, image_id, laterality, view, age, cancer,
biopsy, invasive, BIRADS, implant, density, machine_id, difficult_negative_case). Many files are
JPEG 2000 (pylibjpeg-openjpeg reads them). Each patient has one exam, so the patient is the exam
and the split group.

Labels: ``pathology`` malignant where ``cancer`` is 1, benign where a biopsy found no cancer,
normal where neither biopsy nor cancer and BIRADS is 1 or empty (the competition's negatives);
a BIRADS 0 (recall) or 2 (benign finding) image without biopsy is left "". ``meta["cancer"]`` keeps
the competition's 0/1 label for every image (the breast-level cancer task), with biopsy, invasive,
implant, age, site and machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.adapters.tables import (
    birads_value,
    check_image,
    density_letter,
    header,
    read_table,
    require_columns,
    summary,
)
from mammolens.data.manifest import Manifest
from mammolens.utils.errors import DataError

CSV_NAME = "train.csv"
IMAGES = "train_images"
COLUMNS = ("patient_id", "image_id", "laterality", "view", "cancer", "BIRADS", "density")
FLAGS = ("cancer", "biopsy", "invasive", "implant")
VIEWS = ("CC", "MLO", "ML", "LM", "LMO", "AT")


def _csv(path: Path) -> Path:
    return path if path.is_file() else path / CSV_NAME


def detect(path: Path) -> bool:
    csv_path = _csv(path)
    return csv_path.is_file() and (csv_path.parent / IMAGES).is_dir() and all(c in header(csv_path) for c in COLUMNS)


def near_miss(path: Path) -> str | None:
    csv_path = _csv(path)
    columns = header(csv_path) if csv_path.is_file() else []
    if not {"cancer", "biopsy", "machine_id"} <= set(columns):
        return None
    if not (csv_path.parent / IMAGES).is_dir():
        return f"it has the RSNA {CSV_NAME} but no {IMAGES}/ folder beside it"
    return f"it looks like the RSNA {CSV_NAME} but lacks column(s) " + ", ".join(c for c in COLUMNS if c not in columns)


def load(path: str | Path, *, require_images: bool = True) -> SourceResult:
    """Read the RSNA folder (or its train.csv) into one manifest row per image."""
    csv_path = _csv(Path(path).resolve())
    df = read_table(csv_path)
    require_columns(df, COLUMNS, csv_path)
    records: list[dict[str, Any]] = []
    missing: list[str] = []
    for n, row in enumerate(df.to_dict("records"), start=2):
        where = f"{csv_path}: line {n}"
        records.append(_record(csv_path.parent, row, where))
        check_image(Path(records[-1]["path"]), missing, require_images, f"in {CSV_NAME}")
    if not records:
        raise DataError("lists no images", path=csv_path)
    manifest = Manifest.from_records(records, name="rsna")
    cancer = manifest.df.assign(cancer=[json.loads(m)["cancer"] for m in manifest.df["meta"]])
    breasts = cancer.groupby(["exam_id", "laterality"])["cancer"].max()
    notes = [summary(manifest),
             f"cancer: {int(cancer['cancer'].sum())} images, {int(breasts.sum())} of {len(breasts)} breasts",
             ("pathology: malignant = cancer, benign = biopsied without cancer, normal = neither with BIRADS 1 or empty; "
              "BIRADS 0/2 without biopsy left ''")]
    if missing:
        notes.append(f"{len(missing)} image file(s) listed in {CSV_NAME} are missing")
    return SourceResult(manifest=manifest, notes=notes, missing_files=missing)


def _record(root: Path, row: dict[str, str], where: str) -> dict[str, Any]:
    patient, image = row["patient_id"], row["image_id"]
    if not patient.isdigit() or not image.isdigit():
        raise DataError(f"patient_id {patient!r} and image_id {image!r} must be integers", path=where)
    if row["laterality"] not in ("L", "R"):
        raise DataError(f"laterality {row['laterality']!r} is not L or R", path=where)
    if row["view"] not in VIEWS:
        raise DataError(f"view {row['view']!r} is not one of {', '.join(VIEWS)}", path=where)
    flags = {f: _flag(row.get(f, "0"), where, f) for f in FLAGS}
    birads = birads_value(row["BIRADS"], where, "BIRADS")
    if flags["cancer"]:
        pathology = "malignant"
    elif flags["biopsy"]:
        pathology = "benign"
    else:
        pathology = "normal" if birads in ("1", "") else ""
    return {
        "sample_id": f"rsna-{patient}-{image}",
        "source": "rsna",
        "path": str(root / IMAGES / patient / f"{image}.dcm"),
        "patient_id": patient,
        "exam_id": patient,
        "group": patient,
        "view": row["view"],
        "laterality": row["laterality"],
        "pathology": pathology,
        "lesion_type": "none" if pathology == "normal" else "",
        "density": density_letter(row["density"], where, "density"),
        "birads": birads,
        "meta": json.dumps({**flags, "full_film": pathology in ("benign", "malignant"), "age": _age(row.get("age", ""), where), "site_id": row.get("site_id", ""),
                            "machine_id": row.get("machine_id", ""),
                            "difficult_negative_case": row.get("difficult_negative_case", "") == "True"}),
    }


def _flag(value: str, where: str, field: str) -> int:
    text = value.strip().removesuffix(".0")
    if text not in ("0", "1"):
        raise DataError(f"{field} {value!r} is not 0 or 1", path=where)
    return int(text)


def _age(value: str, where: str) -> float | None:
    if value.strip() in ("", "nan"):
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(f"age {value!r} is not a number", path=where) from None


ADAPTERS.register("rsna")(
    Adapter(detect=detect, load=load, near_miss=near_miss,
            description="RSNA Screening Mammography 2023: train.csv + train_images/<patient_id>/<image_id>.dcm")
)
