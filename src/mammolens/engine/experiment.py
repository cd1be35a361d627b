"""One experiment, end to end: the config's task samples and split -> preprocessing cache -> model ->
Lightning training -> evaluation of the held-out parts -> bundle, in a run folder that is never
overwritten by accident and never resumed with other data or settings.

This is the only module that knows every room; each room stays ignorant of the others and speaks
through the Manifest, the Split, the PreprocessCache, the model registry and the Bundle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.data.splits import save_split
from mammolens.data.tasks import Task
from mammolens.engine.config import ExperimentConfig
from mammolens.engine.run_dir import RUN_RECORD, check_resume, claim_run_dir, open_output
from mammolens.engine.sources import make_or_load_split, split_parts, task_samples
from mammolens.engine.trainers import train_on_parts
from mammolens.preprocess import BuildReport
from mammolens.utils import atomic
from mammolens.utils.configuration import to_dict
from mammolens.utils.provenance import file_hash, json_hash


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, fresh: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one configured model; returns the summary written to ``summary.json``.

    A folder that already holds a run is continued with ``resume`` (only with the same data,
    split and settings), replaced with ``fresh``, and otherwise refused before anything is
    written or computed.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    claim_run_dir(out_dir, resume=resume, fresh=fresh)
    manifest, labels, task = task_samples(cfg, progress=progress)
    split = make_or_load_split(cfg, manifest, labels, task.name)
    record = {"config": to_dict(cfg), "manifest_hash": manifest.content_hash(), "split_hash": json_hash(split.parts)}
    if resume:
        check_resume(out_dir, record)
    open_output(out_dir, "train", fresh=fresh)
    atomic.write_json(out_dir / RUN_RECORD, record)
    save_split(split, out_dir / "split.json")
    manifest.save(out_dir / "manifest.csv")
    parts = split_parts(cfg, split, manifest)
    provenance = {
        "manifest_hash": record["manifest_hash"],
        "split_file_hash": file_hash(out_dir / "split.json"),
        "split": {"kind": split.kind, "seed": split.seed, "sizes": {p: int(len(v)) for p, v in parts.items()}},
        "source": cfg.data.source,
    }
    trained = train_on_parts(cfg, manifest, labels, task, parts, out_dir, resume=resume, progress=progress,
                             provenance=provenance)
    summary = {
        "name": cfg.name,
        "task": task.name,
        "unit": task.unit,
        "classes": list(task.classes),
        "model": cfg.model.name,
        "samples": {p: int(len(v)) for p, v in parts.items()},
        "class_counts": {p: np.bincount(labels[v], minlength=len(task.classes)).tolist() for p, v in parts.items()},
        "groups": int(manifest.df["group"].nunique()),
        "preprocess": trained.build.summary(),
        "notes": manifest.notes + _warnings(trained.build, task) + _fit_notes(trained.bundle.provenance),
        "best_epoch": trained.fit.best_epoch,
        "epochs_run": len(trained.fit.history),
        "stopped_early": trained.fit.stopped_early,
        "history": trained.fit.history,
        "metrics": trained.metrics,
        "temperature_fit": trained.bundle.provenance.get("temperature_fit"),
        "bundle": str(trained.bundle.path),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic.write_json(out_dir / "summary.json", summary)
    return summary


def _fit_notes(provenance: dict[str, Any]) -> list[str]:
    failure = provenance.get("temperature_fit")
    return [] if failure is None else [failure["failure"]]


def _warnings(build: BuildReport, task: Task) -> list[str]:
    if not build.roi_missing:
        return []
    note = f"{len(build.roi_missing)} sample(s) without ROI were kept whole by crop_roi (on_missing: full)"
    if task.unit == "lesion":
        note += "; among lesion crops a whole film is a shortcut: the kind of input can predict the label"
    return [note]
