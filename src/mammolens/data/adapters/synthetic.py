"""Synthetic datasets written by ``mammolens.data.synthetic.generate``: a folder with ``synthetic.csv``.

The MIAS class is derived from the drawing (benign mass CIRC, malignant mass SPIC, either cluster
CALC, normal NORM) so the MIAS-class task also runs on synthetic data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.manifest import Manifest
from mammolens.data.synthetic import CSV_COLUMNS, CSV_NAME, PATHOLOGIES, VIEWS
from mammolens.utils.errors import DataError

_LESIONS = {"normal": ("none",), "benign": ("mass", "calc"), "malignant": ("mass", "calc")}
_MIAS_CLASS = {("normal", "none"): "NORM", ("benign", "mass"): "CIRC", ("malignant", "mass"): "SPIC"}


def _csv_path(path: Path) -> Path | None:
    if path.is_file():
        return path if path.name == CSV_NAME else None
    return path / CSV_NAME if (path / CSV_NAME).is_file() else None


def _roi(row: dict[str, str], where: str) -> list[list[float]]:
    values = [row["roi_x"].strip(), row["roi_y"].strip(), row["roi_r"].strip()]
    if row["pathology"] == "normal":
        if any(values):
            raise DataError("a normal image cannot have an ROI", path=where)
        return []
    try:
        x, y, r = map(float, values)
    except ValueError:
        raise DataError(f"roi_x, roi_y, roi_r must be numbers, got {values}", path=where) from None
    if r <= 0:
        raise DataError(f"roi_r must be positive, got {r}", path=where)
    return [[x, y, r]]


def _record(row: dict[str, str], root: Path, where: str) -> dict[str, Any]:
    if None in row or None in row.values():
        raise DataError(f"row does not have the {len(CSV_COLUMNS)} fields of the header", path=where)
    pathology, lesion_type = row["pathology"], row["lesion_type"]
    if pathology not in PATHOLOGIES:
        raise DataError(f"pathology {pathology!r} is not one of {', '.join(PATHOLOGIES)}", path=where)
    if lesion_type not in _LESIONS[pathology]:
        raise DataError(f"lesion_type {lesion_type!r} does not fit pathology {pathology!r}", path=where)
    if row["laterality"] not in ("L", "R"):
        raise DataError(f"laterality {row['laterality']!r} is not L or R", path=where)
    if row["view"] not in VIEWS:
        raise DataError(f"view {row['view']!r} is not one of {', '.join(VIEWS)}", path=where)
    if not row["patient"] or not row["file"]:
        raise DataError("empty file or patient", path=where)
    return {
        "sample_id": Path(row["file"]).stem,
        "source": "synthetic",
        "path": str(root / row["file"]),
        "patient_id": row["patient"],
        "exam_id": row["patient"],
        "group": row["patient"],
        "view": row["view"],
        "laterality": row["laterality"],
        "pathology": pathology,
        "abnormality": _MIAS_CLASS.get((pathology, lesion_type), "CALC"),
        "lesion_type": lesion_type,
        "rois": json.dumps(_roi(row, where)),
    }


def load(path: str | Path, *, require_images: bool = True) -> SourceResult:
    """Read a synthetic dataset folder (or its ``synthetic.csv``) into one manifest row per image."""
    csv_path = _csv_path(Path(path).resolve())
    if csv_path is None:
        raise DataError(f"no {CSV_NAME} here; make one with mammolens.data.synthetic.generate", path=path)
    root = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            lacking = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if lacking:
                raise DataError(f"lacks column(s) {', '.join(lacking)}", path=csv_path)
            rows = list(enumerate(reader, start=2))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", path=csv_path) from None
    if not rows:
        raise DataError("has no data rows", path=csv_path)
    records, missing = [], []
    for lineno, row in rows:
        record = _record(row, root, f"{csv_path}:{lineno}")
        if not Path(record["path"]).is_file():
            if require_images:
                raise DataError("image listed in synthetic.csv not found", path=record["path"])
            missing.append(record["path"])
        records.append(record)
    manifest = Manifest.from_records(records, name="synthetic")
    counts = manifest.df["pathology"].value_counts()
    notes = [
        f"{len(manifest)} synthetic images of {manifest.df['group'].nunique()} patients: "
        + ", ".join(f"{counts.get(p, 0)} {p}" for p in PATHOLOGIES)
    ]
    if missing:
        notes.append(f"{len(missing)} image file(s) listed in {CSV_NAME} are missing")
    return SourceResult(manifest=manifest, notes=notes, missing_files=missing)


def detect(path: Path) -> bool:
    return _csv_path(Path(path)) is not None


ADAPTERS.register("synthetic")(
    Adapter(detect=detect, load=load, description="synthetic mammograms from mammolens.data.synthetic (synthetic.csv)")
)
