"""Combining several bundles' probabilities: the mean, or a stacked scikit-learn estimator.

A stacked combiner is fitted on the members' OUT-OF-FOLD predictions only (cv runs'
``predictions.csv``) and stored as its fitted numbers in JSON, never as a pickle; its output is
recomputed from them here (and checked against scikit-learn's own output when fitted). The ensemble
bundle that carries a combiner is ``mammolens.bundle.ensemble``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mammolens.utils.errors import DataError
from mammolens.utils.registry import Registry


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
