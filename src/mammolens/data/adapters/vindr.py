"""VinDr-Mammo (PhysioNet, 5,000 exams, 20,000 DICOMs): ``images/<study_id>/<image_id>.dicom``.

``breast-level_annotations.csv`` has one row per image (study_id, series_id, image_id, laterality,
view_position, height, width, breast_birads "BI-RADS 1".."5", breast_density "DENSITY A".."D",
split training/test); ``finding_annotations.csv`` one row per finding, or one "['No Finding']" row
per image, with finding_categories as a Python-list string, finding_birads and the box corners
xmin, ymin, xmax, ymax in the image's pixels, which become box ROIs.

VinDr names no patient: each study is one woman's one exam, so the study is the patient, the exam
and the split group. Nothing was biopsied, so ``pathology`` stays "" except for a BI-RADS 1 image
without findings ("normal"); the assessment is in ``birads``. Finding categories and BI-RADS per
box are in ``meta["marks"]``, in the order of the ROIs; the official split in
``meta["official_split"]`` (``data.split.official: true`` keeps it).
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.adapters.tables import birads_value, check_image, density_letter, read_table, require_columns, summary
from mammolens.data.manifest import Manifest
from mammolens.data.rois import box, dump_rois
from mammolens.utils.errors import DataError

BREAST_CSV = "breast-level_annotations.csv"
FINDING_CSV = "finding_annotations.csv"
BREAST_COLUMNS = ("study_id", "image_id", "laterality", "view_position", "height", "width", "breast_birads",
                  "breast_density", "split")
FINDING_COLUMNS = ("image_id", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax")
SPLITS = ("training", "test")
MASS, CALC = "Mass", "Suspicious Calcification"


def _root(path: Path) -> Path:
    return path.parent if path.is_file() else path


def detect(path: Path) -> bool:
    return (_root(path) / BREAST_CSV).is_file() and (path.is_dir() or path.name == BREAST_CSV)


def near_miss(path: Path) -> str | None:
    root = _root(path)
    if (root / FINDING_CSV).is_file() and not (root / BREAST_CSV).is_file():
        return f"it has VinDr-Mammo's {FINDING_CSV} but not {BREAST_CSV}, which lists every image"
    return None


def load(path: str | Path, *, require_images: bool = True) -> SourceResult:
    """Read a VinDr-Mammo folder (or its breast-level CSV) into one manifest row per image."""
    root = _root(Path(path).resolve())
    breast_csv = root / BREAST_CSV
    df = read_table(breast_csv)
    require_columns(df, BREAST_COLUMNS, breast_csv)
    marks, notes = _findings(root, df)
    records: list[dict[str, Any]] = []
    missing: list[str] = []
    seen: set[str] = set()
    for n, row in enumerate(df.to_dict("records"), start=2):
        where = f"{breast_csv}: line {n}"
        if row["image_id"] in seen:
            raise DataError(f"image_id {row['image_id']!r} is listed twice", path=where)
        seen.add(row["image_id"])
        records.append(_record(root, row, marks.get(row["image_id"], []), where))
        check_image(Path(records[-1]["path"]), missing, require_images, f"in {BREAST_CSV}")
    if not records:
        raise DataError("lists no images", path=breast_csv)
    manifest = Manifest.from_records(records, name="vindr")
    notes.insert(0, summary(manifest))
    split = manifest.df["meta"].map(lambda m: json.loads(m)["official_split"]).value_counts()
    notes.append("official split: " + ", ".join(f"{k} {v}" for k, v in split.items()) + " images (data.split.official keeps it)")
    notes.append("no pathology (nothing was biopsied): BI-RADS 1 images without findings are 'normal', the rest ''")
    if missing:
        notes.append(f"{len(missing)} image file(s) listed in {BREAST_CSV} are missing")
    return SourceResult(manifest=manifest, notes=notes, missing_files=missing)


def _record(root: Path, row: dict[str, str], marks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    if row["laterality"] not in ("L", "R"):
        raise DataError(f"laterality {row['laterality']!r} is not L or R", path=where)
    if row["split"] not in SPLITS:
        raise DataError(f"split {row['split']!r} is not one of {', '.join(SPLITS)}", path=where)
    if not row["study_id"] or not row["image_id"]:
        raise DataError("empty study_id or image_id", path=where)
    birads = birads_value(row["breast_birads"], where, "breast_birads")
    categories = {c for m in marks for c in m["categories"]}
    lesion = ("mass" if MASS in categories and CALC not in categories else
              "calc" if CALC in categories and MASS not in categories else "none" if not marks else "")
    study = row["study_id"]
    return {
        "sample_id": f"vindr-{row['image_id']}",
        "source": "vindr",
        "path": str(root / "images" / study / f"{row['image_id']}.dicom"),
        "patient_id": study,
        "exam_id": study,
        "group": study,
        "view": row["view_position"].upper(),
        "laterality": row["laterality"],
        "pathology": "normal" if birads == "1" and not marks else "",
        "lesion_type": lesion,
        "density": density_letter(row["breast_density"], where, "breast_density"),
        "birads": birads,
        "rois": dump_rois(m["roi"] for m in marks),
        "meta": json.dumps({"official_split": row["split"], "series_id": row.get("series_id", ""),
                            "marks": [{k: v for k, v in m.items() if k != "roi"} for m in marks]}),
    }


def _findings(root: Path, breast: Any) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Boxed findings per image_id from finding_annotations.csv (absent: no boxes, said in a note)."""
    csv_path = root / FINDING_CSV
    if not csv_path.is_file():
        return {}, [f"no {FINDING_CSV}: images carry no finding boxes"]
    df = read_table(csv_path)
    require_columns(df, FINDING_COLUMNS, csv_path)
    size = {r["image_id"]: (r["width"], r["height"]) for r in breast.to_dict("records")}
    out: dict[str, list[dict[str, Any]]] = {}
    for n, row in enumerate(df.to_dict("records"), start=2):
        where = f"{csv_path}: line {n}"
        if row["image_id"] not in size:
            raise DataError(f"image_id {row['image_id']!r} is not in {BREAST_CSV}", path=where)
        categories = _categories(row["finding_categories"], where)
        if categories == ["No Finding"]:
            continue
        corners = [row[c] for c in ("xmin", "ymin", "xmax", "ymax")]
        if all(c == "" for c in corners):
            raise DataError(f"finding {categories} has no box (xmin, ymin, xmax, ymax are empty)", path=where)
        try:
            x0, y0, x1, y1 = (float(c) for c in corners)
        except ValueError:
            raise DataError(f"xmin, ymin, xmax, ymax must be numbers, got {corners}", path=where) from None
        width, height = (_int(v, where, f) for v, f in zip(size[row["image_id"]], ("width", "height")))
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height) or any(map(math.isnan, (x0, y0, x1, y1))):
            raise DataError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not inside the {width}x{height} image", path=where)
        out.setdefault(row["image_id"], []).append({
            "categories": categories,
            "birads": birads_value(row["finding_birads"], where, "finding_birads"),
            "roi": box(x0, y0, x1, y1),
        })
    return out, []


def _categories(text: str, where: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DataError(f"finding_categories {text!r} is not a list of names such as \"['Mass']\"", path=where)
    return value


def _int(value: str, where: str, field: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        raise DataError(f"{field} {value!r} is not a number", path=where) from None


ADAPTERS.register("vindr")(
    Adapter(detect=detect, load=load, near_miss=near_miss,
            description="VinDr-Mammo: images/<study_id>/<image_id>.dicom + breast-level and finding annotation CSVs")
)
