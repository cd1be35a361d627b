"""Stacked NumPy arrays, as the seed projects saved them: ``images.npy`` (N, H, W), ``labels.npy``
(N integers) and optionally ``groups.npy`` (N patient ids).

The default label encoding is the seeds' five classes: 0 normal (baseline), 1 mass benign,
2 mass malignant, 3 calc benign, 4 calc malignant. ``label_names`` maps another encoding onto
the names in ``LABEL_MEANINGS``. Arrays are opened memory-mapped: loading reads shapes, not pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.manifest import Manifest
from mammolens.utils.errors import ConfigError, DataError

# label name -> (pathology, lesion_type)
LABEL_MEANINGS = {
    "normal": ("normal", "none"),
    "benign": ("benign", ""),
    "malignant": ("malignant", ""),
    "mass-benign": ("benign", "mass"),
    "mass-malignant": ("malignant", "mass"),
    "calc-benign": ("benign", "calc"),
    "calc-malignant": ("malignant", "calc"),
}
DEFAULT_LABEL_NAMES = {0: "normal", 1: "mass-benign", 2: "mass-malignant", 3: "calc-benign", 4: "calc-malignant"}


def _label_names(option: Any) -> dict[int, str]:
    """``label_names`` as {int label: meaning}; a list means {index: name}."""
    if option is None:
        return DEFAULT_LABEL_NAMES
    items = enumerate(option) if isinstance(option, list) else option.items() if isinstance(option, dict) else None
    if items is None:
        raise ConfigError(f"option label_names must be a mapping {{label: name}} or a list, got {type(option).__name__}")
    names = {}
    for key, name in items:
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"option label_names: key {key!r} is not an integer label") from None
        if name not in LABEL_MEANINGS:
            raise ConfigError(f"option label_names: {label} -> {name!r} is not one of {', '.join(LABEL_MEANINGS)}")
        names[label] = name
    return names


def _open(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{what} file not found", path=path) from None
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise DataError(f"cannot read {what} without unpickling ({exc}); save plain numbers or strings", path=path) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file is the user's to fix
        raise DataError(f"cannot read {what} ({type(exc).__name__}: {exc})", path=path) from None


def _labels(path: Path) -> np.ndarray:
    labels = np.asarray(_open(path, "labels"))
    if labels.ndim != 1:
        raise DataError(f"labels must be one integer per sample, got shape {labels.shape}", path=path)
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)  # seeds sometimes saved integer labels as floats
    if labels.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {labels.dtype}", path=path)
    return labels


def _paths(path: Path, labels: Any, groups: Any) -> tuple[Path, Path, Path | None]:
    images = path / "images.npy" if path.is_dir() else path
    folder = images.parent
    labels_path = folder / (labels or "labels.npy")  # an absolute option path replaces the folder
    groups_path = folder / (groups or "groups.npy")
    if groups is None and not groups_path.exists():
        groups_path = None
    return images.resolve(), labels_path.resolve(), groups_path and groups_path.resolve()


def load(
    path: str | Path,
    *,
    require_images: bool = True,
    label_names: dict[int, str] | list[str] | None = None,
    labels: str | Path | None = None,
    groups: str | Path | None = None,
) -> SourceResult:
    """Read ``images.npy`` + ``labels.npy`` (+ ``groups.npy``) from a folder, or the named images
    file with those beside it; ``labels``/``groups`` name other files, relative to that folder."""
    names = _label_names(label_names)
    images_path, labels_path, groups_path = _paths(Path(path), labels, groups)
    y = _labels(labels_path)
    bad = sorted(set(np.unique(y).tolist()) - set(names))
    if bad:
        raise DataError(
            f"label value {bad[0]} is not in label_names ({', '.join(f'{k}={v}' for k, v in sorted(names.items()))})",
            path=labels_path,
        )
    missing, notes = [], []
    if images_path.exists():
        shape = _open(images_path, "images").shape
        if len(shape) != 3:
            raise DataError(f"images must be stacked as (N, H, W), got shape {shape}", path=images_path)
        if shape[0] != len(y):
            raise DataError(f"{shape[0]} images but {len(y)} labels in {labels_path.name}", path=images_path)
    elif require_images:
        raise DataError("images file not found", path=images_path)
    else:
        missing.append(str(images_path))
    if groups_path is not None:
        g = np.asarray(_open(groups_path, "groups"))
        if g.shape != y.shape:
            raise DataError(f"groups must be one id per sample ({len(y)}), got shape {g.shape}", path=groups_path)
        patient = [str(v).strip() for v in g.tolist()]
        if "" in patient:
            raise DataError(f"sample {patient.index('')} has an empty group id", path=groups_path)
    else:
        patient = None
        notes.append(
            "no groups.npy: each sample is its own group, so patient-level splits rely on the dedup step "
            "to merge images of one woman"
        )
    prefix = f"arrays-{images_path.parent.name}-{images_path.stem}"
    records = []
    for i, label in enumerate(y.tolist()):
        pathology, lesion_type = LABEL_MEANINGS[names[label]]
        sample_id = f"{prefix}-{i:06d}"
        records.append(
            {
                "sample_id": sample_id,
                "source": "arrays",
                "path": str(images_path),
                "frame": i,
                "patient_id": patient[i] if patient else "",
                "group": patient[i] if patient else sample_id,
                "pathology": pathology,
                "lesion_type": lesion_type,
                "meta": json.dumps({"label": label, "label_name": names[label]}),
            }
        )
    manifest = Manifest.from_records(records, name="arrays")
    counts = {names[k]: int(v) for k, v in zip(*np.unique(y, return_counts=True))}
    notes.insert(0, f"{len(y)} samples from {images_path.name}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return SourceResult(manifest=manifest, notes=notes, missing_files=missing)


def detect(path: Path) -> bool:
    if path.is_dir():
        return (path / "images.npy").is_file() and (path / "labels.npy").is_file()
    return path.suffix == ".npy" and (path.parent / "labels.npy").is_file() and path.name != "labels.npy"


ADAPTERS.register("arrays")(
    Adapter(detect=detect, load=load, description="stacked images.npy (N,H,W) + labels.npy (+ groups.npy)")
)
