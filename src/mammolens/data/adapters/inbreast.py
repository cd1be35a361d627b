"""INbreast (410 images, 115 cases): ``AllDICOMs/``, ``AllXML/`` and ``INbreast.xls``.

``INbreast.xls``: one row per image (Patient ID "removed", Laterality, View, Acquisition date,
File Name, ACR 1-4, Bi-Rads such as 2 or "4c", Mass, Micros, Distortion, Asymmetry, notes), ending
in two footer rows (an empty one, then totals), which are dropped. ``AllDICOMs/<File Name>_<patient
hash>_MG_<L|R>_<CC|ML>_ANON.dcm``: the hash is the only patient key the set gives, so it is the split
group; the exam is the patient and the acquisition date. ``AllXML/<File Name>.xml`` (OsiriX plist)
holds the image's ROIs: Name, NumberOfPoints and ``Point_px`` "(x, y)" strings in pixels; an outline
of three or more points is a polygon ROI, a one- or two-point mark (a calcification) a small circle.

Nothing was biopsied: pathology is "normal" for Bi-Rads 1 images without ROIs, else ""; the
assessment is in ``birads``, ACR density in ``density``. ROI names are in ``meta["marks"]``.
"""

from __future__ import annotations

import json
import plistlib
import re
from pathlib import Path
from typing import Any

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.adapters.tables import birads_value, density_letter, read_table, require_columns, summary
from mammolens.data.manifest import Manifest
from mammolens.data.rois import Roi, circle, dump_rois, polygon
from mammolens.utils.errors import DataError

TABLE = "INbreast.xls"
DICOMS, XMLS = "AllDICOMs", "AllXML"
COLUMNS = ("Laterality", "View", "File Name", "ACR", "Bi-Rads")
VIEWS = {"CC": "CC", "MLO": "MLO", "ML": "MLO"}  # file names spell MLO as ML
POINT_RADIUS = 3.0  # px: a one-point calcification mark as a circle
_NAME = re.compile(r"(\d+)_([0-9a-fA-F]+)_MG_([LR])_(CC|MLO?)_ANON\.dcm")
_POINT = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?:,\s*[-+0-9.eE]+\s*)?\)")


def _root(path: Path) -> Path:
    return path.parent if path.is_file() else path


def detect(path: Path) -> bool:
    root = _root(path)
    return (root / TABLE).is_file() and (root / DICOMS).is_dir()


def near_miss(path: Path) -> str | None:
    root = _root(path)
    if (root / TABLE).is_file() and not (root / DICOMS).is_dir():
        return f"it has {TABLE} but no {DICOMS}/ folder beside it"
    if (root / DICOMS).is_dir() and not (root / TABLE).is_file():
        return f"it has INbreast's {DICOMS}/ folder but not {TABLE}, which holds the labels"
    return None


def load(path: str | Path, *, require_images: bool = True) -> SourceResult:
    """Read an INbreast folder into one manifest row per image listed in INbreast.xls."""
    root = _root(Path(path).resolve())
    table = root / TABLE
    df = read_table(table)
    require_columns(df, COLUMNS, table)
    rows = _without_footer(df.to_dict("records"), table)
    dicoms = _dicoms(root / DICOMS)
    records: list[dict[str, Any]] = []
    missing: list[str] = []
    for n, row in rows:
        where = f"{table}: row {n}"
        name = row["File Name"]
        if name not in dicoms:
            if require_images:
                raise DataError(f"File Name {name}: no {DICOMS}/{name}_*_MG_*_ANON.dcm", path=where)
            missing.append(f"{root / DICOMS / name}_*.dcm")
            continue
        records.append(_record(root, row, dicoms[name], where))
    if not records:
        raise DataError("no image of the table was found", path=table)
    manifest = Manifest.from_records(records, name="inbreast")
    notes = [summary(manifest),
             "no pathology (nothing was biopsied): Bi-Rads 1 images without ROIs are 'normal', the rest ''"]
    unlisted = sorted(set(dicoms) - {r["File Name"] for _, r in rows})
    if unlisted:
        notes.append(f"{len(unlisted)} DICOM(s) have no row in {TABLE} and were not loaded: {', '.join(unlisted[:10])}")
    if missing:
        notes.append(f"{len(missing)} image(s) listed in {TABLE} have no DICOM")
    return SourceResult(manifest=manifest, notes=notes, missing_files=missing)


def _without_footer(rows: list[dict[str, str]], table: Path) -> list[tuple[int, dict[str, str]]]:
    """Data rows with their spreadsheet row numbers; trailing rows without a File Name number or without
    Laterality and View are the footer (the real table ends in an empty row and a totals row)."""
    numbered = list(enumerate(rows, start=2))
    while numbered and not (numbered[-1][1]["File Name"].isdigit() and (numbered[-1][1]["Laterality"] or numbered[-1][1]["View"])):
        numbered.pop()
    for n, row in numbered:
        if not row["File Name"].isdigit():
            raise DataError(f"File Name {row['File Name']!r} is not a number", path=f"{table}: row {n}")
    return numbered


def _dicoms(folder: Path) -> dict[str, tuple[Path, re.Match[str]]]:
    if not folder.is_dir():
        raise DataError("folder not found", path=folder)
    out = {}
    for path in sorted(folder.glob("*.dcm")):
        match = _NAME.fullmatch(path.name)
        if match is None:
            raise DataError("name is not <File Name>_<patient>_MG_<L|R>_<CC|ML>_ANON.dcm", path=path)
        out[match.group(1)] = (path, match)
    return out


def _record(root: Path, row: dict[str, str], found: tuple[Path, re.Match[str]], where: str) -> dict[str, Any]:
    path, match = found
    side, view = row["Laterality"].strip().upper(), VIEWS.get(row["View"].strip().upper())
    if side not in ("L", "R") or view is None:
        raise DataError(f"Laterality {row['Laterality']!r} / View {row['View']!r} are not L/R and CC/MLO", path=where)
    if (match.group(3), VIEWS[match.group(4)]) != (side, view):
        raise DataError(f"the table says {side} {view} but the file name says {match.group(3)} {match.group(4)}: "
                        f"{path.name}", path=where)
    patient = match.group(2)
    marks = _rois(root / XMLS / f"{row['File Name']}.xml")
    birads = birads_value(row["Bi-Rads"], where, "Bi-Rads")
    mass, micros = (bool(row.get(c, "").strip()) for c in ("Mass", "Micros"))
    date = row.get("Acquisition date", "")
    return {
        "sample_id": f"inbreast-{row['File Name']}",
        "source": "inbreast",
        "path": str(path),
        "patient_id": patient,
        "exam_id": f"{patient}-{date}" if date else patient,
        "group": patient,
        "view": view,
        "laterality": side,
        "pathology": "normal" if birads == "1" and not marks else "",
        "lesion_type": "mass" if mass and not micros else "calc" if micros and not mass else "none" if birads == "1" else "",
        "density": density_letter(row["ACR"], where, "ACR"),
        "birads": birads,
        "rois": dump_rois(roi for _, roi in marks),
        "meta": json.dumps({"marks": [name for name, _ in marks], "findings_flags": {
            c: bool(row.get(c, "").strip()) for c in ("Mass", "Micros", "Distortion", "Asymmetry")}}),
    }


def _rois(xml: Path) -> list[tuple[str, Roi]]:
    """(Name, ROI) of every ROI in an OsiriX plist; an image without an XML has none."""
    if not xml.is_file():
        return []
    try:
        doc = plistlib.loads(xml.read_bytes())
        images = doc["Images"]
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise DataError(f"not an OsiriX ROI plist ({type(exc).__name__}: {exc})", path=xml) from None
    out = []
    for image in images:
        for k, item in enumerate(image.get("ROIs", []), start=1):
            where = f"{xml}: ROI {k} ({item.get('Name', '?')})"
            points = []
            for text in item.get("Point_px", []):
                match = _POINT.fullmatch(str(text).strip())
                if match is None:
                    raise DataError(f"Point_px {text!r} is not '(x, y)'", path=where)
                points.append((float(match.group(1)), float(match.group(2))))
            if not points:
                raise DataError("has no Point_px points", path=where)
            if "NumberOfPoints" in item and int(item["NumberOfPoints"]) != len(points):
                raise DataError(f"NumberOfPoints is {item['NumberOfPoints']} but Point_px has {len(points)}", path=where)
            if len(points) >= 3:
                roi = polygon(points)
            else:
                (x0, y0), (x1, y1) = points[0], points[-1]
                roi = circle((x0 + x1) / 2, (y0 + y1) / 2, max(POINT_RADIUS, ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 / 2))
            out.append((str(item.get("Name", "")), roi))
    return out


ADAPTERS.register("inbreast")(
    Adapter(detect=detect, load=load, near_miss=near_miss,
            description="INbreast: INbreast.xls + AllDICOMs/<File Name>_..._ANON.dcm + AllXML/<File Name>.xml (OsiriX)")
)
