"""The Manifest: one table, one row per sample, that every source is turned into.

Everything downstream (tasks, splits, preprocessing, training, evaluation) reads only this table,
never a source's own layout. Coordinates are in the pixels of the *original* image, origin at the
top-left corner, ``x`` = column and ``y`` = row, so overlays land on the mammogram as read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from mammolens.data.rois import Roi, parse_rois
from mammolens.utils import atomic
from mammolens.utils.errors import DataError

# column -> (dtype, default). Strings use "" for "unknown", never NaN, so equality checks work.
COLUMNS: dict[str, tuple[str, Any]] = {
    "sample_id": ("str", None),  # unique within the manifest
    "source": ("str", None),  # adapter name: mias, cbis-ddsm, vindr, rsna, cmmd, inbreast, folders, arrays, synthetic
    "path": ("str", None),  # absolute path of the full image file
    "frame": ("int", -1),  # index into a stacked array file (.npy), -1 for single images
    "patient_id": ("str", ""),  # as the source names the woman / case ("" when unknown)
    "exam_id": ("str", ""),  # the screening exam (visit) the film belongs to ("" when unknown)
    "group": ("str", None),  # split unit: patient, film pair or duplicate group; never split
    "view": ("str", ""),  # CC, MLO, ... ("" when unknown)
    "laterality": ("str", ""),  # L, R ("" when unknown)
    "pathology": ("str", ""),  # normal, benign, malignant ("" when unknown)
    "abnormality": ("str", ""),  # MIAS class: NORM CALC CIRC SPIC MISC ARCH ASYM ("" otherwise)
    "lesion_type": ("str", ""),  # none, mass, calc ("" when unknown)
    "density": ("str", ""),  # BI-RADS breast density A, B, C, D ("" when unknown)
    "birads": ("str", ""),  # BI-RADS assessment 0-6, with 4a/4b/4c ("" when unknown)
    "rois": ("str", "[]"),  # JSON list of circles, boxes, polygons or masks in original-image pixels (data.rois)
    "mask_path": ("str", ""),  # binary ROI mask image for this sample's lesion, if any
    "meta": ("str", "{}"),  # JSON dict of source-specific extras (never DICOM identifiers)
}

PATHOLOGIES = ("normal", "benign", "malignant", "")
LESION_TYPES = ("none", "mass", "calc", "")
DENSITIES = ("A", "B", "C", "D", "")
BIRADS = ("0", "1", "2", "3", "4", "4a", "4b", "4c", "5", "6", "")
# Columns added after manifests (and the splits saved against their hash) existed: they enter the
# content hash only where they say something, so an old manifest keeps its hash.
_LATER_COLUMNS = ("exam_id", "density", "birads")
MIAS_CLASSES = ("NORM", "CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM")


class Manifest:
    """A validated table of samples. ``df`` is a plain pandas DataFrame with ``COLUMNS``."""

    def __init__(self, df: pd.DataFrame, *, name: str = "manifest") -> None:
        self.df = _normalise(df, name)
        self.name = name
        self.notes: list[str] = []  # what was left out on the way here, for reports (not saved)

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], *, name: str = "manifest") -> Manifest:
        return cls(pd.DataFrame.from_records(list(records), columns=list(COLUMNS)), name=name)

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return f"Manifest({self.name!r}, {len(self)} samples, {self.df['group'].nunique()} groups)"

    def rois(self, i: int) -> list[tuple[float, float, float]]:
        """Covering circles (x, y, r) of row ``i``'s ROIs in original-image pixels (masks: see ``shapes``)."""
        return [s.circle() for s in self.shapes(i) if s.kind != "mask"]

    def shapes(self, i: int) -> list[Roi]:
        """Row ``i``'s ROIs as they were marked: circles, boxes, polygons or mask files."""
        return parse_rois(self.df["rois"].iat[i], f"{self.name}: sample {self.df['sample_id'].iat[i]!r}")

    def meta(self, i: int) -> dict[str, Any]:
        return json.loads(self.df["meta"].iat[i])

    def subset(self, mask_or_index: Any) -> Manifest:
        df = self.df.loc[mask_or_index] if not isinstance(mask_or_index, list) else self.df.iloc[mask_or_index]
        return Manifest(df.reset_index(drop=True), name=self.name)

    def content_hash(self) -> str:
        """Stable hash of the table's content (order-independent), for provenance and saved splits.

        File locations are left out, so moving a dataset folder keeps its splits valid; the
        preprocessing cache keys on file content separately.
        """
        df = self.df
        said = {"exam_id": (df["exam_id"] != "") & (df["exam_id"] != df["group"])}
        columns = [c for c in COLUMNS if c not in ("path", "mask_path")
                   and (c not in _LATER_COLUMNS or said.get(c, df[c] != "").any())]
        rows = df.sort_values("sample_id")[columns].astype(str).to_numpy().tolist()
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write as ``.parquet`` or ``.csv`` (by suffix), atomically."""
        path = Path(path)
        with atomic.atomic_path(path) as tmp:
            if path.suffix == ".parquet":
                self.df.to_parquet(tmp, index=False)
            elif path.suffix == ".csv":
                self.df.to_csv(tmp, index=False)
            else:
                raise DataError("manifest files end in .parquet or .csv", path=path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise DataError("manifest file not found", path=path)
        try:
            if path.suffix == ".parquet":
                df = pd.read_parquet(path)
            else:
                df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
            raise DataError(f"cannot read manifest ({type(exc).__name__}: {exc})", path=path) from None
        return cls(df, name=path.stem)


def _normalise(df: pd.DataFrame, name: str) -> pd.DataFrame:
    missing = [c for c, (_, default) in COLUMNS.items() if default is None and c not in df.columns]
    if missing:
        raise DataError(f"{name}: manifest lacks required column(s) {', '.join(missing)}")
    out = pd.DataFrame(index=range(len(df)))
    src = df.reset_index(drop=True)
    for col, (kind, default) in COLUMNS.items():
        values = src[col] if col in src.columns else pd.Series([default] * len(src))
        if kind == "int":
            out[col] = pd.to_numeric(values, errors="raise").fillna(default).astype("int64")
        else:
            values = values.astype(object)
            out[col] = values.where(values.notna(), "" if default is None else default).astype(str)
    for col in ("sample_id", "path", "group"):
        empty = out[col] == ""
        if empty.any():
            raise DataError(f"{name}: row {int(empty.idxmax())} has an empty {col!r}")
    dup = out["sample_id"].duplicated()
    if dup.any():
        raise DataError(f"{name}: duplicate sample_id {out['sample_id'][dup].iat[0]!r}")
    out["density"] = out["density"].str.upper()
    out["birads"] = out["birads"].str.lower()
    for col, allowed in (("pathology", PATHOLOGIES), ("lesion_type", LESION_TYPES), ("density", DENSITIES),
                         ("birads", BIRADS)):
        bad = ~out[col].isin(allowed)
        if bad.any():
            raise DataError(
                f"{name}: sample {out['sample_id'][bad].iat[0]!r} has {col}={out[col][bad].iat[0]!r}; "
                f"allowed: {', '.join(a or '(empty)' for a in allowed)}"
            )
    for sample_id, text in zip(out["sample_id"], out["rois"]):
        if text != "[]":
            parse_rois(text, f"{name}: sample {sample_id!r}")
    return out
