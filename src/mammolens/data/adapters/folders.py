"""Class-per-folder sets: the label is the name of a folder on the image's path.

Two published layouts are covered by the default ``label_map``:

- Mendeley "Breast Mammography Images with Masses": ``Benign Masses/`` and ``Malignant Masses/``,
  possibly under a dataset folder, with sub-source folders (INbreast, MIAS, DDSM) above or inside
  them. Files are flat and ship with pre-augmented copies, so each file is its own group here and
  the dedup step must merge near-duplicates before splitting.
- Mini-DDSM: ``Benign/``, ``Cancer/``, ``Normal/``, each with one folder per case, e.g.
  ``Cancer/0029/C_0029_1.LEFT_CC.jpg``. The case folder is the group.

Rules: the label folder is the first folder on a file's path whose name (case-insensitive) is in
``label_map``; every image must lie under one, so an unmapped folder holding images is an error,
never skipped. Images whose file name contains "mask" or "overlay" are annotations, not samples:
they are skipped and counted in the notes. Folders below the label folder that are not a known
sub-source are case folders. Laterality and view are read from file names where they say it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.manifest import Manifest
from mammolens.utils.errors import ConfigError, DataError

DEFAULT_LABEL_MAP = {
    "benign masses": "benign",
    "malignant masses": "malignant",
    "benign": "benign",
    "malignant": "malignant",
    "cancer": "malignant",
    "normal": "normal",
}
PATHOLOGIES = ("normal", "benign", "malignant")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".dcm"}
SUB_SOURCES = {"inbreast": "INbreast", "mias": "MIAS", "ddsm": "DDSM", "cbis-ddsm": "CBIS-DDSM", "mini-ddsm": "Mini-DDSM"}
ANNOTATION_WORDS = ("mask", "overlay")

_SIDES = {"LEFT": "L", "RIGHT": "R", "L": "L", "R": "R"}
_VIEWS = ("CC", "MLO")


def _label_map(option: Any) -> dict[str, str]:
    if option is None:
        return DEFAULT_LABEL_MAP
    if not isinstance(option, dict) or not option:
        raise ConfigError("option label_map must be a non-empty mapping {folder name: normal|benign|malignant}")
    out = {}
    for folder, label in option.items():
        if label not in PATHOLOGIES:
            raise ConfigError(f"option label_map: {folder!r} -> {label!r}; labels are {', '.join(PATHOLOGIES)}")
        out[str(folder).strip().lower()] = label
    return out


def _sub_source(folder: str) -> str | None:
    name = re.sub(r"[\s_-]*dataset$", "", folder.strip().lower()).strip()
    return SUB_SOURCES.get(name)


def side_and_view(stem: str) -> tuple[str, str]:
    """(laterality, view) named in a file stem such as ``C_0029_1.LEFT_CC`` or ``..._MG_R_CC_ANON``;
    '' where the name is silent or contradicts itself. A lone L/R counts only next to a view."""
    tokens = [t for t in re.split(r"[^A-Z0-9]+", stem.upper()) if t]
    sides, views = set(), set()
    for i, tok in enumerate(tokens):
        if tok in ("LEFT", "RIGHT"):
            sides.add(_SIDES[tok])
        elif tok in _VIEWS:
            views.add(tok)
            if i and tokens[i - 1] in ("L", "R"):
                sides.add(tokens[i - 1])
        elif len(tok) > 1 and tok[0] in "LR" and tok[1:] in _VIEWS:  # LCC, RMLO
            sides.add(tok[0])
            views.add(tok[1:])
    return (sides.pop() if len(sides) == 1 else ""), (views.pop() if len(views) == 1 else "")


def _walk(root: Path) -> tuple[list[tuple[str, ...]], int, int]:
    """Relative parts of every image under ``root``, plus counts of annotation images and other files."""
    images, annotations, others = [], 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            stem, suffix = os.path.splitext(name)
            if name.startswith(".") or suffix.lower() not in IMAGE_SUFFIXES:
                others += 1
            elif any(word in stem.lower() for word in ANNOTATION_WORDS):
                annotations += 1
            else:
                images.append((*rel, name))
    return images, annotations, others


def _record(parts: tuple[str, ...], k: int, root: Path, label: str) -> dict[str, Any]:
    """Manifest row of the image at ``root/parts`` whose label folder is ``parts[k]``."""
    rel = "/".join(parts)
    folders = parts[:k] + parts[k + 1 : -1]
    sub_source = next((s for s in map(_sub_source, folders) if s), "")
    case = next((i for i in range(k + 1, len(parts) - 1) if not _sub_source(parts[i])), None)
    sample_id = f"folders-{rel}"
    group = "/".join(parts[: case + 1]) if case is not None else sample_id
    laterality, view = side_and_view(Path(parts[-1]).stem)
    return {
        "sample_id": sample_id,
        "source": "folders",
        "path": str(root.joinpath(*parts)),
        "patient_id": group if case is not None else "",
        "exam_id": group if case is not None else "",  # a case folder holds one exam's views
        "group": group,
        "view": view,
        "laterality": laterality,
        "pathology": label,
        "lesion_type": "none" if label == "normal" else "mass" if "mass" in parts[k].lower() else "",
        "meta": json.dumps({"label_folder": parts[k], "sub_source": sub_source, "folders": list(folders)}),
    }


def load(
    path: str | Path, *, require_images: bool = True, label_map: dict[str, str] | None = None
) -> SourceResult:
    """Read a class-per-folder tree. ``label_map`` (folder name -> normal/benign/malignant) replaces
    ``DEFAULT_LABEL_MAP``. Files are found by listing, so none can be missing: ``require_images``
    has nothing to check here."""
    mapping = _label_map(label_map)
    root = Path(path).resolve()
    if not root.is_dir():
        raise DataError("a class-per-folder source is a folder", path=root)
    images, annotations, others = _walk(root)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under this folder", path=root)
    known = ", ".join(sorted(mapping))
    records, unlabelled, depths, per_folder = [], [], [], Counter()
    for parts in images:
        k = next((i for i, folder in enumerate(parts[:-1]) if folder.strip().lower() in mapping), None)
        if k is None:
            unlabelled.append(parts)
            continue
        depths.append(k)
        per_folder[parts[k]] += 1
        records.append(_record(parts, k, root, mapping[parts[k].strip().lower()]))
    if unlabelled:  # name the folder at the depth where the label folders are
        depth = min(depths, default=0)
        parts = unlabelled[0]
        where = "/".join(parts[: depth + 1]) if len(parts) > depth + 1 else "/".join(parts)
        raise DataError(
            f"{len(unlabelled)} image(s) lie outside any label folder, e.g. under {where!r}; "
            f"known label folders: {known} (set label_map to map it)",
            path=root,
        )
    manifest = Manifest.from_records(records, name="folders")
    df = manifest.df
    notes = [
        f"{len(df)} images: "
        + ", ".join(f"{n} in {f!r} ({mapping[f.strip().lower()]})" for f, n in sorted(per_folder.items()))
    ]
    flat = int((df["group"] == df["sample_id"]).sum())
    if flat:
        notes.append(
            f"{flat} image(s) sit directly in label folders, so each is its own group: run dedup before "
            "splitting (this layout can hold augmented copies of one image)"
        )
    if annotations:
        notes.append(f"skipped {annotations} annotation image(s) (file name contains {' or '.join(ANNOTATION_WORDS)!r})")
    if others:
        notes.append(f"ignored {others} non-image or hidden file(s)")
    return SourceResult(manifest=manifest, notes=notes)


def detect(path: Path) -> bool:
    if not path.is_dir():
        return False
    root_depth = len(path.parts)
    for dirpath, dirnames, _ in os.walk(path):
        if any(d.strip().lower() in DEFAULT_LABEL_MAP for d in dirnames):
            return True
        if len(Path(dirpath).parts) - root_depth >= 2:
            dirnames[:] = []
    return False


ADAPTERS.register("folders")(
    Adapter(
        detect=detect, load=load, description="class-per-folder images (Mendeley masses set, Mini-DDSM, or any label_map)"
    )
)
