"""Patient-grouped, label-stratified splits, saved to disk and refused when they no longer fit.

A split is a list of sample_ids per part, tied to the manifest it was made for by the manifest's
content hash. No ``group`` (patient, film pair, duplicate cluster) is ever in two parts:
``check_no_leakage`` enforces it when a split is made and again whenever one is loaded.

Splits depend only on the manifest's content, the labels and the seed (rows are sorted by
sample_id first), so re-reading a source in another order gives the same split.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mammolens.data.manifest import Manifest
from mammolens.utils import atomic
from mammolens.utils.errors import ConfigError, DataError

FORMAT = "mammolens-split"
VERSION = 1
KINDS = ("holdout", "kfold")
MAX_HOLDOUT_FOLDS = 20  # finest grid of group folds a holdout part is assembled from


@dataclass
class Split:
    """Sample ids per part: ``train``/``val``/``test`` (holdout) or ``fold0``..``fold{k-1}`` (kfold)."""

    parts: dict[str, list[str]]
    seed: int
    manifest_hash: str
    kind: str
    task: str = ""

    def indices(self, manifest: Manifest, part: str) -> np.ndarray:
        """Row positions in ``manifest`` of the samples of ``part``, ascending."""
        if part not in self.parts:
            raise ConfigError(f"unknown split part {part!r}; parts: {', '.join(self.parts)}")
        positions = pd.Index(manifest.df["sample_id"]).get_indexer(self.parts[part])
        if (positions < 0).any():
            missing = self.parts[part][int(np.argmax(positions < 0))]
            raise DataError(f"split part {part!r} names sample {missing!r}, which is not in the manifest")
        return np.sort(positions)

    def fold(self, i: int) -> tuple[list[str], list[str]]:
        """(train_ids, val_ids) of fold ``i`` of a k-fold split: fold i validates, the others train."""
        if self.kind != "kfold":
            raise ConfigError(f"fold() needs a kfold split; this one is {self.kind!r}")
        k = len(self.parts)
        if not 0 <= i < k:
            raise ConfigError(f"fold {i} does not exist; this split has folds 0..{k - 1}")
        train = sorted(s for j in range(k) if j != i for s in self.parts[f"fold{j}"])
        return train, list(self.parts[f"fold{i}"])


def _labels(manifest: Manifest, labels: Any) -> np.ndarray:
    values = pd.Series(list(labels), dtype=object)
    if len(values) != len(manifest):
        raise DataError(f"{len(values)} labels for a manifest of {len(manifest)} samples")
    missing = values.isna() | (values.astype(str) == "")
    if missing.any():
        sample = manifest.df["sample_id"].iat[int(np.argmax(missing.to_numpy()))]
        raise DataError(f"sample {sample!r} has no label; drop unlabelled samples before splitting")
    return values.astype(str).to_numpy()


def _groups_per_class(labels: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    return pd.DataFrame({"y": labels, "g": groups}).groupby("y")["g"].nunique().to_dict()


def _require_groups(labels: np.ndarray, groups: np.ndarray, need: int, what: str) -> None:
    for cls, count in sorted(_groups_per_class(labels, groups).items(), key=lambda kv: (kv[1], kv[0])):
        if count < need:
            raise DataError(f"cannot make {what}: class {cls!r} has {count} patient groups (need at least {need})")


def _fold_grid(fraction: float, max_folds: int) -> tuple[int, int]:
    """(m, k): m of k folds make ``fraction`` most closely (ties go to fewer folds)."""
    best = None
    for k in range(2, max(2, max_folds) + 1):
        m = min(k - 1, max(1, round(fraction * k)))
        err = abs(m / k - fraction)
        if best is None or err < best[0] - 1e-12:
            best = (err, m, k)
    return best[1], best[2]


def _hold_out(idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions (subset of ``idx``) of about ``fraction`` of ``idx``: whole groups, stratified."""
    if fraction <= 0:
        return idx[:0]
    max_folds = min(MAX_HOLDOUT_FOLDS, *_groups_per_class(labels[idx], groups[idx]).values())
    m, k = _fold_grid(fraction, max_folds)
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # sklearn warns when a class has fewer members than folds
        warnings.simplefilter("ignore", UserWarning)
        tests = [test for _, test in folds.split(idx, labels[idx], groups[idx])]
    return np.sort(idx[np.concatenate(tests[:m])])


def _sorted_rows(manifest: Manifest, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ids, labels and groups sorted by sample_id, so the split ignores row order."""
    y = _labels(manifest, labels)
    ids = manifest.df["sample_id"].to_numpy(dtype=str)
    order = np.argsort(ids, kind="stable")
    return ids[order], y[order], manifest.df["group"].to_numpy(dtype=str)[order]


def make_holdout(
    manifest: Manifest, labels: Any, *, val: float = 0.15, test: float = 0.15, seed: int = 0, task: str = ""
) -> Split:
    """Train / val / test by whole groups, stratified by ``labels`` (one per manifest row).

    The fractions are met as closely as group folds allow: the test part is ``m`` of ``k``
    ``StratifiedGroupKFold`` folds, with ``m/k`` the closest to ``test`` for ``k`` up to 20 and up to
    the number of groups of the smallest class; val is taken the same way from what remains, with
    its fraction rescaled to the remainder. So 0.15 / 0.15 of 1,000 patients gives 15% / 15% (3 of
    20 folds), while a class with only 4 patient groups forces quarters.
    """
    for name, value in (("val", val), ("test", test)):
        if not 0 <= value < 1:
            raise ConfigError(f"split {name} fraction must lie in [0, 1), got {value}")
    if val + test >= 1:
        raise ConfigError(f"split val + test must be below 1 so something is left to train on, got {val + test}")
    ids, y, groups = _sorted_rows(manifest, labels)
    n_parts = 1 + (val > 0) + (test > 0)
    _require_groups(y, groups, n_parts, "a train/val/test split" if n_parts == 3 else f"a {n_parts}-part split")
    everything = np.arange(len(ids))
    test_idx = _hold_out(everything, y, groups, test, seed)
    rest = np.setdiff1d(everything, test_idx)
    val_idx = _hold_out(rest, y, groups, val / (1 - len(test_idx) / len(ids)), seed)
    train_idx = np.setdiff1d(rest, val_idx)
    parts = {name: ids[idx].tolist() for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    split = Split(parts=parts, seed=seed, manifest_hash=manifest.content_hash(), kind="holdout", task=task)
    check_no_leakage(manifest, split)
    return split


def make_official(manifest: Manifest, labels: Any, *, val: float = 0.15, seed: int = 0, task: str = "") -> Split:
    """The source's own train/test split (``meta["official_split"]``: VinDr-Mammo, CBIS-DDSM), with
    val taken from its training part by whole groups, stratified, as ``make_holdout`` does.

    Refused when a row has no official part or a group (patient) sits in both parts.
    """
    if not 0 <= val < 1:
        raise ConfigError(f"split val fraction must lie in [0, 1), got {val}")
    ids, y, groups = _sorted_rows(manifest, labels)
    meta = manifest.df.set_index("sample_id").loc[ids, "meta"]
    official = np.array([str(json.loads(m).get("official_split", "")).lower() for m in meta])
    unknown = ~np.isin(official, ("training", "train", "test"))
    if unknown.any():
        raise DataError(f"sample {ids[int(np.argmax(unknown))]!r} has no official split (training/test) in its source; "
                        "use a made split (data.split.official: false)")
    test_idx = np.flatnonzero(official == "test")
    rest = np.flatnonzero(official != "test")
    if len(rest) == 0 or len(test_idx) == 0:
        raise DataError("the official split has an empty part: "
                        f"{len(rest)} training and {len(test_idx)} test samples")
    share = val * len(ids) / len(rest)
    if share >= 1:
        raise ConfigError(f"split val {val} of all samples is more than the official training part ({len(rest)} of {len(ids)})")
    val_idx = _hold_out(rest, y, groups, share, seed)
    train_idx = np.setdiff1d(rest, val_idx)
    parts = {name: ids[idx].tolist() for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    split = Split(parts=parts, seed=seed, manifest_hash=manifest.content_hash(), kind="holdout", task=task)
    check_no_leakage(manifest, split)
    return split


def make_kfold(manifest: Manifest, labels: Any, *, k: int = 5, seed: int = 0, task: str = "") -> Split:
    """``k`` folds of whole groups, stratified by ``labels``, with ``StratifiedGroupKFold``."""
    if k < 2:
        raise ConfigError(f"split k must be at least 2, got {k}")
    ids, y, groups = _sorted_rows(manifest, labels)
    _require_groups(y, groups, k, f"{k} folds")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    parts = {f"fold{i}": sorted(ids[test].tolist()) for i, (_, test) in enumerate(folds.split(ids, y, groups))}
    split = Split(parts=parts, seed=seed, manifest_hash=manifest.content_hash(), kind="kfold", task=task)
    check_no_leakage(manifest, split)
    return split


def _check_parts(split: Split) -> None:
    """What can be checked without the manifest: no sample in two parts."""
    seen: dict[str, str] = {}
    for part, members in split.parts.items():
        for sample in members:
            if sample in seen:
                raise DataError(f"sample {sample!r} is in both split parts {seen[sample]!r} and {part!r}")
            seen[sample] = part


def check_no_leakage(manifest: Manifest, split: Split) -> None:
    """Raise DataError if a sample is in two parts, unknown to ``manifest``, or its group spans two parts."""
    _check_parts(split)
    group_of = dict(zip(manifest.df["sample_id"], manifest.df["group"]))
    unknown = [s for members in split.parts.values() for s in members if s not in group_of]
    if unknown:
        raise DataError(f"split names {len(unknown)} sample(s) not in the manifest, e.g. {unknown[0]!r}")
    owner: dict[str, tuple[str, str]] = {}  # group -> (part, a sample of it)
    for part, members in split.parts.items():
        for sample in members:
            group = group_of[sample]
            first = owner.setdefault(group, (part, sample))
            if first[0] != part:
                raise DataError(
                    f"group {group!r} spans split parts {first[0]!r} and {part!r} "
                    f"(samples {first[1]!r} and {sample!r}): that leaks a patient across parts"
                )


def save_split(split: Split, path: str | Path) -> Path:
    """Write ``split`` as JSON, atomically."""
    path = Path(path)
    atomic.write_json(path, {"format": FORMAT, "version": VERSION, **asdict(split)})
    return path


def load_split(path: str | Path, manifest: Manifest | None = None) -> Split:
    """Read a split; with ``manifest``, refuse it unless it was made for that exact manifest and does not leak."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("split file not found", path=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split ({type(exc).__name__}: {exc})", path=path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"not a mammolens split file (no \"format\": \"{FORMAT}\")", path=path)
    if data.get("version") != VERSION:
        raise DataError(
            f"split format version {data.get('version')!r} is not supported (expected {VERSION})", path=path
        )
    parts, seed, mhash, kind, task = (data.get(k) for k in ("parts", "seed", "manifest_hash", "kind", "task"))
    if not (
        isinstance(parts, dict)
        and all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in parts.values())
    ):
        raise DataError("field 'parts' must map part names to lists of sample ids", path=path)
    if not isinstance(seed, int) or not isinstance(mhash, str) or not isinstance(task, str):
        raise DataError("fields 'seed' (int), 'manifest_hash' and 'task' (strings) are required", path=path)
    if kind not in KINDS:
        raise DataError(f"field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}", path=path)
    split = Split(parts=parts, seed=seed, manifest_hash=mhash, kind=kind, task=task)
    try:
        _check_parts(split)
        if manifest is not None:
            actual = manifest.content_hash()
            if actual != mhash:
                raise DataError(
                    f"split was made for manifest {mhash}, but this manifest is {actual} "
                    "(samples, labels, paths or groups changed); make a new split"
                )
            check_no_leakage(manifest, split)
    except DataError as exc:
        raise DataError(str(exc), path=path) from None
    return split
