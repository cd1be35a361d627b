"""Ensemble bundles: several bundles' probabilities combined by a mean or a stacked scikit-learn estimator.

An ensemble is itself a bundle directory::

    ensemble/
      bundle.json        {"kind": "ensemble", "format_version", "classes", "task", "threshold",
                          "temperature", "members": ["members/0", ...], "member_sha256": [...],
                          "combiner": {"method": "mean" | "logreg" | "linear-svc" | "svc", ...},
                          "metrics", "provenance"}
      members/0/ ...     each member a complete bundle (or ensemble), copied in (hard links
                         where the filesystem allows), so the directory travels as one piece

A stacked combiner is fitted on the members' OUT-OF-FOLD predictions only (cv runs'
``predictions.csv``) and stored as its fitted numbers in JSON, never as a pickle; its output is
recomputed from them here (and checked against scikit-learn's own output when fitted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.atomic import write_json
from mammolens.errors import ConfigError, DataError
from mammolens.evaluate.calibration import apply_temperature
from mammolens.registry import Registry

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

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """The members' shared preprocessing config; None when they differ (use predict_manifest)."""
        from mammolens.evaluate.predict import leaf_bundles, preprocess_key

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


# ---------------------------------------------------------------------- combiners
def stack_features(member_probas: Sequence[np.ndarray]) -> np.ndarray:
    """The stacker's input: p(class 1) of each member (binary), or all class probabilities of each member."""
    probas = [np.asarray(p, dtype=np.float64) for p in member_probas]
    if probas[0].shape[1] == 2:
        return np.stack([p[:, 1] for p in probas], axis=1)
    return np.concatenate(probas, axis=1)


def _two_columns(p1: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - p1, p1], axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def _decision(base: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """(N, K) decision values of a stored linear or RBF estimator (K = 1 for binary)."""
    if base["type"] == "linear":
        return x @ np.asarray(base["coef"]).T + np.asarray(base["intercept"])
    columns = []
    for est in base["estimators"]:  # one binary RBF SVC per column (one-vs-rest for multi-class)
        sv = np.asarray(est["support_vectors"])
        d2 = (x * x).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2 * x @ sv.T
        columns.append(np.exp(-base["gamma"] * np.maximum(d2, 0.0)) @ np.asarray(est["dual_coef"]) + est["intercept"])
    return np.stack(columns, axis=1)


def _calibrated(entry: dict[str, Any], x: np.ndarray, n_classes: int) -> np.ndarray:
    """One of CalibratedClassifierCV's sigmoid-calibrated classifiers, recomputed (sklearn's rule)."""
    f = _decision(entry["base"], x)
    cal = np.stack([_sigmoid(-(c["a"] * f[:, k] + c["b"])) for k, c in enumerate(entry["calibrators"])], axis=1)
    if n_classes == 2:
        return _two_columns(cal[:, 0])
    total = cal.sum(axis=1, keepdims=True)
    return np.divide(cal, total, out=np.full_like(cal, 1.0 / n_classes), where=total != 0)


def combiner_output(combiner: dict[str, Any], member_probas: Sequence[np.ndarray]) -> np.ndarray:
    method = combiner["method"]
    n_classes = np.asarray(member_probas[0]).shape[1]
    if method == "mean":
        return np.mean([np.asarray(p, dtype=np.float64) for p in member_probas], axis=0)
    x = stack_features(member_probas)
    if method == "logreg":
        z = x @ np.asarray(combiner["coef"]).T + np.asarray(combiner["intercept"])
        return _two_columns(_sigmoid(z[:, 0])) if n_classes == 2 else _softmax(z)
    if method in ("linear-svc", "svc"):
        return np.mean([_calibrated(e, x, n_classes) for e in combiner["calibrated"]], axis=0)
    raise DataError(f"unknown ensemble combiner {method!r}; known: {', '.join(STACKERS.names())}, mean")


# ---------------------------------------------------------------------- fitting stackers
STACKERS: Registry[Callable[..., dict[str, Any]]] = Registry("stacking method")


def _cv(y: np.ndarray, groups: np.ndarray, seed: int, n_splits: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    # every training fold needs every class: a class held by g patient groups supports at most g folds
    per_class = [len(np.unique(groups[y == c])) for c in range(int(y.max()) + 1)]
    n_splits = min(n_splits, *per_class)
    if n_splits < 2:
        rarest = int(np.argmin(per_class))
        raise DataError(f"stacking needs at least 2 patient groups of every class in the out-of-fold predictions; "
                        f"class {rarest} has {per_class[rarest]}")  # fmt: skip
    return list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(y, y, groups))


@STACKERS.register("logreg")
def _fit_logreg(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x, y)
    combiner = {"method": "logreg", "coef": est.coef_.tolist(), "intercept": est.intercept_.tolist()}
    return _checked(combiner, x, est.predict_proba(x))


def _calibrated_params(cal: Any, kind: str) -> dict[str, Any]:
    est = cal.estimator
    if kind == "linear":
        base = {"type": "linear", "coef": est.coef_.tolist(), "intercept": est.intercept_.tolist()}
    else:
        binaries = getattr(est, "estimators_", [est])  # OneVsRestClassifier for multi-class
        base = {"type": "rbf", "gamma": float(binaries[0]._gamma), "estimators": [
            {"support_vectors": b.support_vectors_.tolist(), "dual_coef": b.dual_coef_[0].tolist(),
             "intercept": float(b.intercept_[0])} for b in binaries]}  # fmt: skip
    return {"base": base, "calibrators": [{"a": float(c.a_), "b": float(c.b_)} for c in cal.calibrators]}


def _fit_svc(kind: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> dict[str, Any]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import SVC, LinearSVC

    if kind == "linear":
        base = LinearSVC(class_weight="balanced", random_state=seed)
    else:
        base = SVC(kernel="rbf", class_weight="balanced", random_state=seed)
        if len(np.unique(y)) > 2:
            base = OneVsRestClassifier(base)
    est = CalibratedClassifierCV(base, method="sigmoid", cv=_cv(y, groups, seed)).fit(x, y)
    if list(est.classes_) != list(range(int(y.max()) + 1)):
        raise DataError("stacking needs every class in every calibration fold")
    combiner = {"method": "linear-svc" if kind == "linear" else "svc",
                "calibrated": [_calibrated_params(c, kind) for c in est.calibrated_classifiers_]}
    return _checked(combiner, x, est.predict_proba(x))


STACKERS.add("linear-svc", lambda x, y, groups, seed: _fit_svc("linear", x, y, groups, seed))
STACKERS.add("svc", lambda x, y, groups, seed: _fit_svc("rbf", x, y, groups, seed))


def _checked(combiner: dict[str, Any], x: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """The stored numbers must reproduce the fitted estimator, or the JSON would be a lie."""
    n_classes = expected.shape[1]
    members = _features_to_probas(x, n_classes)
    got = combiner_output(combiner, members)
    if not np.allclose(got, expected, atol=1e-6):
        raise RuntimeError(f"stored {combiner['method']} parameters do not reproduce scikit-learn's output")
    return combiner


def _features_to_probas(x: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Inverse of stack_features (for the self-check)."""
    if n_classes == 2:
        return [_two_columns(x[:, j]) for j in range(x.shape[1])]
    return [x[:, j:j + n_classes] for j in range(0, x.shape[1], n_classes)]


def fit_stacker(method: str, member_probas: Sequence[np.ndarray], y: Any, groups: Any, seed: int = 0) -> dict[str, Any]:
    """The combiner JSON of ``method`` fitted on members' out-of-fold probabilities and labels."""
    fit = STACKERS.get(method)
    return fit(stack_features(member_probas), np.asarray(y, dtype=np.int64), np.asarray(groups).astype(str), seed)


def nested_stacking_proba(method: str, member_probas: Sequence[np.ndarray], y: Any, groups: Any,
                          seed: int = 0) -> np.ndarray:
    """Held-out stacker predictions (patient-grouped CV over the OOF rows), to choose threshold and temperature."""
    y, groups = np.asarray(y, dtype=np.int64), np.asarray(groups).astype(str)
    out = np.zeros_like(np.asarray(member_probas[0], dtype=np.float64))
    for train, test in _cv(y, groups, seed, n_splits=5):
        combiner = fit_stacker(method, [p[train] for p in member_probas], y[train], groups[train], seed)
        out[test] = combiner_output(combiner, [p[test] for p in member_probas])
    return out


# ---------------------------------------------------------------------- saving and loading
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
) -> Path:
    """Write the ensemble bundle ``out_dir`` (members copied inside), atomically; return its path."""
    from mammolens.evaluate.load import load_any_bundle
    from mammolens.train.bundle import bundle_writer

    out_dir = Path(out_dir)
    if not member_dirs:
        raise ConfigError("an ensemble needs at least one member bundle")
    members = [load_any_bundle(d) for d in member_dirs]  # checks every member is a sound bundle
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
            "member_sha256": [_sha256(tmp / r / MANIFEST) for r in rel],
            "combiner": combiner,
            "metrics": metrics or {},
            "provenance": {"members_from": [str(Path(d).resolve()) for d in member_dirs], **(provenance or {})},
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
) -> Path:
    """The mean of the members' probabilities (e.g. a cv run's fold bundles); threshold and temperature
    should come from the pooled out-of-fold predictions."""
    return save_ensemble(out_dir, member_dirs, combiner={"method": "mean"}, threshold=threshold,
                         temperature=temperature, metrics=metrics, provenance=provenance)


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path/bundle.json`` declares an ensemble (False for anything unreadable: the plain
    bundle loader then reports what is wrong)."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def load_ensemble(path: str | Path, load_member: Callable[[Path], Any]) -> EnsembleBundle:
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
        if _sha256(member_manifest) != digest:
            raise DataError(f"corrupt: member {rel!r}'s bundle.json does not match its checksum", path=file)
        members.append(load_member(member_dir))
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
    )
