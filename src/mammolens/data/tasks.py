"""Tasks: which manifest column a model learns, at which unit, and how values map to class indices.

A task reads one value per row (a manifest column, or a key of the ``meta`` JSON), so a manifest
from any source supports the tasks whose value it fills: CBIS-DDSM rows (lesions, never normal)
support benign-malignant and mass-calc; MIAS the pathology and abnormality tasks and its background
tissue; every adapter that fills the ``density`` column the BI-RADS density tasks. Lesion tasks (benign-malignant, mass-calc) classify one finding per sample; film tasks one
film (``units.py``). Derive a task on the whole manifest *before* splitting, so every class is
known up front.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mammolens.data.manifest import MIAS_CLASSES, Manifest
from mammolens.data.units import Units, lesion_rows
from mammolens.utils.errors import DataError
from mammolens.utils.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    label_of: Callable[[Mapping[str, Any]], int | None]  # None: the row takes no part in this task
    description: str
    column: str  # where label_of reads (a column, or meta.<key>), named in errors
    unit: str = "film"  # "lesion": one sample per finding (units.lesion_rows); "film": per image
    value_of: Callable[[Mapping[str, Any]], str] | None = None  # the raw value read; None: row[column]
    ordinal: bool = False  # classes are ordered (density): ordinal metrics such as weighted kappa apply

    def value(self, row: Mapping[str, Any]) -> str:
        return self.value_of(row) if self.value_of else str(row.get(self.column, ""))


TASKS: Registry[Task] = Registry("task")


def _column_task(
    name: str, column: str, classes: tuple[str, ...], values: dict[str, str], description: str, unit: str = "film",
    *, value_of: Callable[[Mapping[str, Any]], str] | None = None, ordinal: bool = False,
) -> Task:
    """A task whose label is ``classes.index(values[value])``, the value being ``row[column]`` (or what
    ``value_of`` reads); values not listed are excluded."""
    index = {value: classes.index(cls) for value, cls in values.items()}
    task = Task(name, classes, lambda row: index.get(task.value(row)), description, column, unit, value_of, ordinal)
    return TASKS.add(name, task)


def _meta_value(key: str) -> Callable[[Mapping[str, Any]], str]:
    """Reads ``meta[key]`` (the manifest's JSON extras) of a row; "" when absent."""
    def read(row: Mapping[str, Any]) -> str:
        return str(json.loads(row.get("meta") or "{}").get(key) or "")

    return read


_column_task(
    "benign-malignant", "pathology", ("benign", "malignant"),
    {"benign": "benign", "malignant": "malignant"},
    "benign vs malignant, one sample per finding; normal samples are excluded",
    unit="lesion",
)
_column_task(
    "normal-abnormal", "pathology", ("normal", "abnormal"),
    {"normal": "normal", "benign": "abnormal", "malignant": "abnormal"},
    "normal vs any finding, benign or malignant",
)
_column_task(
    "normal-benign-malignant", "pathology", ("normal", "benign", "malignant"),
    {"normal": "normal", "benign": "benign", "malignant": "malignant"},
    "three-way pathology",
)
_column_task(
    "mias-7class", "abnormality", MIAS_CLASSES,
    {c: c for c in MIAS_CLASSES},
    "MIAS abnormality class, in the order " + " ".join(MIAS_CLASSES),
)
_column_task(
    "mias-tissue", "meta.tissue", ("fatty", "fatty-glandular", "dense-glandular"),
    {t: t for t in ("fatty", "fatty-glandular", "dense-glandular")},
    "MIAS background tissue (Info.txt column 2: F, G, D), least to most dense",
    value_of=_meta_value("tissue"), ordinal=True,
)
_column_task(
    "density", "density", ("A", "B", "C", "D"), {g: g for g in "ABCD"},
    "BI-RADS breast density A-D (almost entirely fatty .. extremely dense)", ordinal=True,
)
_column_task(
    "dense", "density", ("non-dense", "dense"),
    {"A": "non-dense", "B": "non-dense", "C": "dense", "D": "dense"},
    "dense breasts (BI-RADS C or D) vs not (A or B): the binary call screening reports carry",
)
_column_task(
    "mass-calc", "lesion_type", ("mass", "calc"),
    {"mass": "mass", "calc": "calc"},
    "lesion type, one sample per finding; MIAS ARCH and ASYM count as mass",
    unit="lesion",
)


def _labels(manifest: Manifest, task: Task) -> np.ndarray:
    """Class index per row, -1 where the row is excluded."""
    labels = (task.label_of(row) for row in manifest.df.to_dict("records"))
    return np.array([-1 if y is None else y for y in labels], dtype=np.int64)


def _check(manifest: Manifest, task: Task, labels: np.ndarray, allow_missing_classes: bool) -> None:
    present = set(labels[labels >= 0].tolist())
    needed = len(task.classes) if not allow_missing_classes else 2
    if len(present) >= needed:
        return
    values = pd.Series([task.value(row) for row in manifest.df.to_dict("records")], dtype=str)
    values = values.replace("", "(empty)").value_counts()
    found = ", ".join(f"{v} {n}" for v, n in values.items()) or "no rows"
    absent = [c for i, c in enumerate(task.classes) if i not in present]
    raise DataError(
        f"task {task.name} needs {', '.join(absent)} samples; {manifest.name} has none "
        f"(column {task.column}: {found})"
    )


def task_units(manifest: Manifest, name: str, *, keep_unlocated: bool = False) -> Units:
    """The manifest at task ``name``'s unit (lesion rows for a lesion task), with what was left out."""
    if TASKS.get(name).unit == "lesion":
        return lesion_rows(manifest, keep_unlocated=keep_unlocated)
    return Units(manifest)


def derive_task(
    manifest: Manifest, name: str, *, allow_missing_classes: bool = False, keep_unlocated: bool = False
) -> tuple[Manifest, np.ndarray]:
    """The samples of task ``name`` (one per finding for a lesion task) and their class indices.

    Every class must be present, since a class absent at training time cannot be learned or
    scored; ``allow_missing_classes`` relaxes that to two classes, for evaluating on a subset.
    Lesions without coordinates are left out unless ``keep_unlocated``; the returned manifest's
    ``notes`` say which.
    """
    task = TASKS.get(name)
    units = task_units(manifest, name, keep_unlocated=keep_unlocated)
    labels = _labels(units.manifest, task)
    if units.left_out and not (labels >= 0).any():
        raise DataError(
            f"{manifest.name}: no lesion of task {name} has a location (coordinates or an ROI mask file); "
            f"{len(units.left_out)} left out, e.g. {units.left_out[0]}"
        )
    _check(units.manifest, task, labels, allow_missing_classes)
    keep = labels >= 0
    out = units.manifest.subset(keep)
    if units.left_out:
        out.notes.append(
            f"{len(units.left_out)} finding(s) without a location left out of lesion task {name}: "
            + "; ".join(units.left_out)
        )
    return out, labels[keep]


def task_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """Samples per class for each task this manifest fully supports, at the task's unit."""
    counts = {}
    for name in TASKS.names():
        task = TASKS.get(name)
        units = task_units(manifest, name)
        labels = _labels(units.manifest, task)
        if len(set(labels[labels >= 0].tolist())) == len(task.classes):
            counts[name] = {c: int((labels == i).sum()) for i, c in enumerate(task.classes)}
    return counts
