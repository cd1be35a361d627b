"""What the VinDr-Mammo, RSNA, CMMD and INbreast adapters share: reading their tables and grades.

Each set writes BI-RADS its own way ("BI-RADS 4", "DENSITY C", 2.0, "4c", ACR 3); these turn them
into the manifest's ``birads`` ("0".."6", "4a".."4c") and ``density`` ("A".."D") or a one-line
error naming the file, the row and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from mammolens.data.manifest import BIRADS, Manifest
from mammolens.utils.errors import DataError, MammolensError

_NUMBER = re.compile(r"\d+(\.0+)?")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or spreadsheet as strings ("" for empty cells), header names stripped."""
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        if path.suffix.lower() == ".xls":
            df = _read_xls(path)
        elif path.suffix.lower() == ".xlsx":
            df = pd.read_excel(path, dtype=object, engine="openpyxl", keep_default_na=False).map(_cell)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except ImportError as exc:
        raise DataError(f"reading this file needs {exc.name} (pip install {exc.name})", path=path) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise DataError(f"cannot read table ({type(exc).__name__}: {exc})", path=path) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _read_xls(path: Path) -> pd.DataFrame:
    """The first sheet of an old-style .xls through xlrd itself (pandas' xlrd engine is deprecated)."""
    import xlrd

    sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
    rows = [[_cell(v) for v in sheet.row_values(r)] for r in range(sheet.nrows)]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows[1:], columns=rows[0])


def _cell(value: Any) -> str:
    """Spreadsheet cells as text: 2.0 -> "2", NaN -> ""."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"lacks column(s) {', '.join(repr(c) for c in missing)}", path=path)


def header(path: Path) -> list[str]:
    """A CSV's column names, [] when it cannot be read (for detection)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return [c.strip() for c in fh.readline().split(",")]
    except OSError:
        return []


def density_letter(value: str, where: str, field: str) -> str:
    """BI-RADS density as A-D from "DENSITY C", "C", "3" (ACR 1-4) or "" (unknown)."""
    text = value.strip().upper().removeprefix("DENSITY").strip()
    if text in ("", "NAN"):
        return ""
    if text in ("A", "B", "C", "D"):
        return text
    if _NUMBER.fullmatch(text) and 1 <= int(float(text)) <= 4:
        return "ABCD"[int(float(text)) - 1]
    raise DataError(f"{field} {value!r} is not a BI-RADS density (A-D, or 1-4)", path=where)


def birads_value(value: str, where: str, field: str) -> str:
    """BI-RADS assessment as "0".."6" / "4a".."4c" from "BI-RADS 4", "4C", 2.0 or "" (unknown)."""
    text = value.strip().lower().removeprefix("bi-rads").strip()
    if text in ("", "nan"):
        return ""
    if _NUMBER.fullmatch(text):
        text = str(int(float(text)))
    if text not in BIRADS:
        raise DataError(f"{field} {value!r} is not a BI-RADS category (0-6, 4a-4c)", path=where)
    return text


def check_image(path: Path, missing: list[str], require_images: bool, what: str) -> bool:
    """True when the image file exists; else a DataError, or listed in ``missing`` when images are optional."""
    if path.is_file():
        return True
    if require_images:
        raise DataError(f"image file not found (listed {what})", path=path)
    missing.append(str(path))
    return False


def header_of(path: Path, bad: list[str], require_images: bool) -> Any:
    """The image's header facts (``io.read_meta``), or None with the reason in ``bad`` when optional."""
    from mammolens.io import read_meta

    try:
        return read_meta(path)
    except MammolensError as exc:
        if require_images:
            raise
        bad.append(str(exc))
        return None


def summary(manifest: Manifest) -> str:
    """The first note of every adapter here: images, patients, exams and their labels."""
    df = manifest.df
    parts = [f"{len(df)} images", f"{df['patient_id'].nunique()} patients", f"{df['exam_id'].nunique()} exams"]
    for column in ("density", "birads", "pathology"):
        counts = df.loc[df[column] != "", column].value_counts().sort_index()
        if len(counts):
            parts.append(f"{column} " + " ".join(f"{k}:{v}" for k, v in counts.items()))
    return ", ".join(parts)
