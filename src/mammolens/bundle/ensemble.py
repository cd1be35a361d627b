"""Ensemble bundles: several bundles' probabilities combined by a mean or a stacked estimator
(``mammolens.evaluate.ensembles``).

An ensemble is itself a bundle directory::

    ensemble/
      bundle.json        {"kind": "ensemble", "format_version", "classes", "task", "threshold",
                          "temperature", "members": ["members/0", ...], "member_sha256": [...],
                          "combiner": {"method": "mean" | "logreg" | "linear-svc" | "svc", ...},
                          "metrics", "provenance"}
      members/0/ ...     each member a complete bundle (or ensemble), copied in (hard links
                         where the filesystem allows), so the directory travels as one piece
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.bundle.model import bundle_writer, file_sha256, load_model_bundle
from mammolens.evaluate.calibration import apply_temperature
from mammolens.evaluate.ensembles import STACKERS, combiner_output
from mammolens.evaluate.predict import leaf_bundles, preprocess_key
from mammolens.utils.atomic import write_json
from mammolens.utils.errors import ConfigError, DataError

FORMAT_VERSION = 1
KIND = "ensemble"
MANIFEST = "bundle.json"
_REQUIRED = ("format_version", "kind", "classes", "task", "threshold", "temperature", "members", "member_sha256",
             "combiner")


@dataclasses.dataclass
class EnsembleBundle:
    """Quacks like ``mammolens.train.Bundle`` for scoring: classes, task, threshold, temperature, predict_proba."""

    path: Path
    members: list[Any]
    classes: list[str]
    task: str
    threshold: float
    temperature: float
    combiner: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    aggregator: dict[str, Any] | None = None  # as a model bundle's (evaluate.exams), fitted on its own validation data

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """The members' shared preprocessing config; None when they differ (use predict_manifest)."""
        configs = {preprocess_key(leaf.preprocess): leaf.preprocess for leaf in leaf_bundles(self)}
        return next(iter(configs.values())) if len(configs) == 1 else None

    def combine(self, member_probas: Sequence[np.ndarray]) -> np.ndarray:
        """Members' (N, C) probabilities -> the ensemble's temperature-scaled (N, C) probabilities."""
        proba = combiner_output(self.combiner, member_probas)
        return proba if self.temperature == 1.0 else apply_temperature(proba, self.temperature)

    def predict_proba(self, batch: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        """``descriptors`` go to the members with a lesion-descriptor head (they share one pipeline)."""
        if self.preprocess is None:
            raise ConfigError("the members of this ensemble preprocess differently; score it with "
                              "mammolens.evaluate.predict_manifest", path=self.path)
        return self.combine([m.predict_proba(batch, descriptors=descriptors)
                             if getattr(m, "descriptor_head", None) is not None else m.predict_proba(batch)
                             for m in self.members])


# ---------------------------------------------------------------------- saving and loading
def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # bundles are replaced by rename, never edited in place: a hard link is safe
    except OSError:
        shutil.copy2(src, dst)


def check_members(members: Sequence[Any], names: Sequence[str]) -> None:
    """Members must agree on task and classes (one line naming the first that does not)."""
    first = members[0]
    for member, name in zip(members[1:], names[1:]):
        if member.task != first.task:
            raise ConfigError(f"ensemble members disagree on task: {names[0]} is {first.task!r}, "
                              f"{name} is {member.task!r}")
        if list(member.classes) != list(first.classes):
            raise ConfigError(f"ensemble members disagree on classes: {names[0]} has {list(first.classes)}, "
                              f"{name} has {list(member.classes)}")


def save_ensemble(
    out_dir: str | Path,
    member_dirs: Sequence[str | Path],
    *,
    combiner: dict[str, Any],
    threshold: float,
    temperature: float,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    aggregator: dict[str, Any] | None = None,
) -> Path:
    """Write the ensemble bundle ``out_dir`` (members copied inside), atomically; return its path."""
    out_dir = Path(out_dir)
    if not member_dirs:
        raise ConfigError("an ensemble needs at least one member bundle")
    members = [load_bundle(d) for d in member_dirs]  # checks every member is a sound bundle
    check_members(members, [str(d) for d in member_dirs])
    with bundle_writer(out_dir, threshold=threshold, temperature=temperature) as tmp:
        rel = []
        for i, src in enumerate(member_dirs):
            shutil.copytree(src, tmp / "members" / str(i), copy_function=_link_or_copy,
                            ignore=shutil.ignore_patterns(".*.tmp"))
            rel.append(f"members/{i}")
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "classes": list(members[0].classes),
            "task": members[0].task,
            "threshold": float(threshold),
            "temperature": float(temperature),
            "members": rel,
            "member_sha256": [file_sha256(tmp / r / MANIFEST) for r in rel],
            "combiner": combiner,
            "metrics": metrics or {},
            "provenance": {"members_from": [str(Path(d).resolve()) for d in member_dirs], **(provenance or {})},
            "aggregator": aggregator,
        }
        write_json(tmp / MANIFEST, manifest)
    return out_dir


def save_mean_ensemble(
    out_dir: str | Path,
    member_dirs: Sequence[str | Path],
    threshold: float,
    temperature: float,
    metrics: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    aggregator: dict[str, Any] | None = None,
) -> Path:
    """The mean of the members' probabilities (e.g. a cv run's fold bundles); threshold, temperature and
    aggregator should come from the pooled out-of-fold predictions."""
    return save_ensemble(out_dir, member_dirs, combiner={"method": "mean"}, threshold=threshold,
                         temperature=temperature, metrics=metrics, provenance=provenance, aggregator=aggregator)


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path/bundle.json`` declares an ensemble (False for anything unreadable: the plain
    bundle loader then reports what is wrong)."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def load_bundle(path: str | Path) -> Any:
    """A model ``Bundle`` or an ``EnsembleBundle`` (members, themselves either kind, loaded recursively):
    every verb loads through here, so each accepts whatever ``train`` or ``cv`` wrote."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError("bundle not found (expected a directory with bundle.json)", path=path)
    return load_ensemble(path) if is_ensemble(path) else load_model_bundle(path)


def load_ensemble(path: str | Path) -> EnsembleBundle:
    path = Path(path)
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"corrupt: not valid JSON ({exc})", path=file) from None
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise DataError(f"corrupt: missing key {missing[0]!r}", path=file)
    if not isinstance(manifest["format_version"], int) or not 1 <= manifest["format_version"] <= FORMAT_VERSION:
        raise ConfigError(f"ensemble format version {manifest['format_version']!r} is not supported "
                          f"(this mammolens reads 1..{FORMAT_VERSION}); upgrade mammolens", path=file)
    rels, sums = manifest["members"], manifest["member_sha256"]
    if not isinstance(rels, list) or not rels or not isinstance(sums, list) or len(sums) != len(rels):
        raise DataError("corrupt: 'members' must list the member bundles, with one checksum each", path=file)
    members = []
    for rel, digest in zip(rels, sums):
        member_dir = (path / str(rel)).resolve()
        if path.resolve() not in member_dir.parents:
            raise DataError(f"corrupt: member {rel!r} lies outside the ensemble directory", path=file)
        member_manifest = member_dir / MANIFEST
        if not member_manifest.is_file():
            raise DataError(f"member {rel!r} is missing", path=path)
        if file_sha256(member_manifest) != digest:
            raise DataError(f"corrupt: member {rel!r}'s bundle.json does not match its checksum", path=file)
        members.append(load_bundle(member_dir))
    check_members(members, [str(r) for r in rels])
    if list(members[0].classes) != list(manifest["classes"]) or members[0].task != manifest["task"]:
        raise DataError("corrupt: the ensemble's classes or task differ from its members'", path=file)
    combiner = manifest["combiner"]
    if not isinstance(combiner, dict) or combiner.get("method") not in ("mean", *STACKERS.names()):
        raise DataError(f"corrupt: unknown combiner {combiner!r}", path=file)
    return EnsembleBundle(
        path=path, members=members, classes=list(manifest["classes"]), task=manifest["task"],
        threshold=float(manifest["threshold"]), temperature=float(manifest["temperature"]), combiner=combiner,
        metrics=manifest.get("metrics") or {}, provenance=manifest.get("provenance") or {},
        aggregator=manifest.get("aggregator"),
    )
