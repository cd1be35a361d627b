"""The exam room: film (view) probabilities combined into one per breast and one per exam.

Radiologists and screening AIs score the breast and the exam, not the film. This module is the one
place that does it, so ``evaluate --level``, ``cv``, the Predictor and the PACS node agree exactly.

Input: one row per view, columns ``exam_id``, ``laterality`` (L/R), ``view`` and one ``p_<class>``
column per class (a binary task may give only its positive class, e.g. ``p_malignant``). Classes
are taken as ordered by severity, the last column the most severe (benign < malignant, normal <
abnormal, BI-RADS density a < b < c < d).

Two stages, views -> breast -> exam, with one method (``AGGREGATORS``):

- ``max``: the most severe view, i.e. the row with the highest expected class index
  ``sum_k k * p_k``, taken whole. For a binary task that is simply the largest p(positive); for
  density it is the denser breast's call (the BI-RADS rule), and the output stays a probability
  vector.
- ``mean``: the average of each class's probability (exam: the mean of its breasts' means, so a
  breast with three views weighs as much as one with one).
- ``fitted``: binary only; a logistic regression on the logits of a breast's max and mean view
  probability, its two weights held >= 0, fitted on validation views (``fit_aggregator``) and
  stored as plain JSON. A breast is scored with it; the exam takes its most suspicious breast (an
  exam is positive if any breast is).

Labels follow the same rule: a breast is positive if any of its views is, an exam if any of its
breasts is; with several classes the highest (most severe) index wins. ``LABEL_COLUMNS`` hold class
indices, ``-1`` meaning unlabelled (ignored unless every view is unlabelled). ``GROUP_COLUMNS``
(the woman) must be constant inside a unit and pass through, so bootstraps still resample women;
every other column passes through where it is constant inside every unit and is dropped otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from mammolens.utils.errors import ConfigError, DataError
from mammolens.utils.registry import Registry

KEYS = {"breast": ["exam_id", "laterality"], "exam": ["exam_id"]}
LABEL_COLUMNS = ("y", "label_index")
GROUP_COLUMNS = ("group", "patient_id")
_EPS = 1e-6

# A reducer takes one unit's (n, C) probability block (plus the fitted parameters) and returns (C,).
Reducer = Callable[[np.ndarray, "Mapping[str, Any] | None"], np.ndarray]
AGGREGATORS: Registry[tuple[Reducer, Reducer]] = Registry("aggregator")  # (views->breast, breasts->exam)


def _severity(block: np.ndarray) -> np.ndarray:
    """Expected class index of each row (a single column is p(positive) itself)."""
    if block.shape[1] == 1:
        return block[:, 0]
    return block @ np.arange(block.shape[1], dtype=np.float64)


def _most_severe(block: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
    return block[int(np.argmax(_severity(block)))]


def _mean(block: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
    return block.mean(axis=0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _fitted_breast(block: np.ndarray, params: Mapping[str, Any] | None) -> np.ndarray:
    if params is None:
        raise ConfigError("aggregator 'fitted' needs its parameters (fit_aggregator on validation views)")
    p1 = block[:, -1]
    z = float(np.dot(params["coef"], [_logit(p1.max()), _logit(p1.mean())]) + params["intercept"])
    p = 1.0 / (1.0 + math.exp(-z))
    return np.array([p]) if block.shape[1] == 1 else np.array([1.0 - p, p])


AGGREGATORS.add("max", (_most_severe, _most_severe))
AGGREGATORS.add("mean", (_mean, _mean))
AGGREGATORS.add("fitted", (_fitted_breast, _most_severe))


def prob_columns(views: pd.DataFrame) -> list[str]:
    """The ``p_<class>`` columns, in table order."""
    return [c for c in views.columns if str(c).startswith("p_")]


def _check(views: pd.DataFrame, level: str) -> list[str]:
    if level not in KEYS:
        raise ConfigError(f"level {level!r} cannot be aggregated to; known: {', '.join(KEYS)}")
    needed = KEYS[level] if level == "exam" else ["exam_id", "laterality"]
    missing = [c for c in needed if c not in views.columns]
    columns = prob_columns(views)
    if missing or not columns:
        raise DataError(f"views table lacks column(s) {', '.join(missing + ([] if columns else ['p_<class>']))}")
    if level == "breast":
        bad = ~views["laterality"].astype(str).str.upper().isin(["L", "R"])
        if bad.any():
            raise DataError(f"view of exam {views['exam_id'][bad].iat[0]!r} has laterality "
                            f"{views['laterality'][bad].iat[0]!r}; breast level needs L or R")
    if (views["exam_id"].astype(str) == "").any():
        raise DataError("views table has an empty exam_id")
    return columns


def _label(values: np.ndarray) -> int:
    known = values[values >= 0]
    return int(known.max()) if len(known) else -1


def _reduce(views: pd.DataFrame, keys: list[str], columns: list[str], reducer: Reducer,
            params: Mapping[str, Any] | None) -> pd.DataFrame:
    """One row per unit of ``keys``: probabilities by ``reducer``, labels by max, constants passed on,
    ``n_views`` counted (summed when the rows are breasts that already carry it)."""
    labels = [c for c in LABEL_COLUMNS if c in views.columns]
    others = [c for c in views.columns if c not in (*keys, *columns, *labels, "n_views")]
    rows, varying = [], set()
    for key, unit in views.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key))
        row.update(zip(columns, reducer(unit[columns].to_numpy(dtype=np.float64), params)))
        row["n_views"] = int(unit["n_views"].sum()) if "n_views" in unit else len(unit)
        row.update({c: _label(unit[c].to_numpy(dtype=np.int64)) for c in labels})
        for c in others:
            distinct = unit[c].unique()
            if len(distinct) == 1:
                row[c] = distinct[0]
            elif c in GROUP_COLUMNS:
                raise DataError(f"exam {key[0]!r} holds views of more than one {c} ({', '.join(map(str, distinct[:3]))})")
            else:
                varying.add(c)
        rows.append(row)
    kept = [c for c in others if c not in varying]
    return pd.DataFrame(rows, columns=[*keys, *columns, "n_views", *labels, *kept])


def aggregate(views: pd.DataFrame, level: str, method: str = "max",
              params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per breast (``exam_id, laterality``) or per exam (``exam_id``), with the same
    ``p_<class>`` columns, ``n_views`` and the labels at that level (see the module docstring).

    ``params``: the JSON of ``fit_aggregator`` for ``method="fitted"``.
    """
    to_breast, to_exam = AGGREGATORS.get(method)
    columns = _check(views, level)
    if method == "fitted":
        _check_fitted(params, columns)
    views = views.assign(laterality=views["laterality"].astype(str).str.upper()) if "laterality" in views else views
    if level == "exam" and "laterality" not in views.columns:  # sides unknown: the views straight to the exam
        return _reduce(views, KEYS["exam"], columns, to_breast, params)
    breasts = _reduce(views, KEYS["breast"], columns, to_breast, params)
    if level == "breast":
        return breasts
    return _reduce(breasts.drop(columns=["laterality"]), KEYS["exam"], columns, to_exam, params)


def _check_fitted(params: Mapping[str, Any] | None, columns: list[str]) -> None:
    if len(columns) > 2:
        raise ConfigError(f"aggregator 'fitted' is binary only; got {len(columns)} classes ({', '.join(columns)})")
    if params is not None:
        if params.get("method") != "fitted" or len(params.get("coef", ())) != 2 or "intercept" not in params:
            raise ConfigError("aggregator parameters must be fit_aggregator's JSON (method, coef[2], intercept)")
        if params.get("column") != columns[-1]:
            raise ConfigError(f"aggregator was fitted on {params.get('column')!r}, the table's positive class is {columns[-1]!r}")


def fit_aggregator(views: pd.DataFrame, label: str = "y", *, C: float = 1.0) -> dict[str, Any]:
    """The ``fitted`` aggregator's parameters, as plain JSON, from VALIDATION views with labels.

    A logistic regression of the breast label (any view positive) on the logits of the breast's
    max and mean view probability, L2-penalised as scikit-learn's (``C``), with both weights held
    >= 0: a more suspicious view never makes its breast less suspicious. Unconstrained, a validation
    part too small to rank (MIAS: about 42 breasts per fold) gave negative weights in four of five
    folds and turned the exam ranking upside down (docs/results/exams.md); held >= 0, a part without
    signal gives weights near 0 (every breast near the base rate) instead. Pass only views of the
    validation part: fitting on the views it is then evaluated on leaks.
    """
    from scipy.optimize import minimize

    columns = _check(views, "breast")
    _check_fitted(None, columns)
    if label not in views.columns:
        raise DataError(f"views table lacks the label column {label!r} to fit the aggregator on")
    positive = columns[-1]
    maxes = aggregate(views[["exam_id", "laterality", positive, label]], "breast", "max")
    means = aggregate(views[["exam_id", "laterality", positive]], "breast", "mean")
    y = maxes[label].to_numpy()
    keep = y >= 0
    if len(np.unique(y[keep])) < 2:
        raise DataError("fitting the aggregator needs labelled breasts of both classes")
    x = np.column_stack([_logit(maxes[positive].to_numpy()), _logit(means[positive].to_numpy())])[keep]
    sign = np.where(y[keep] == 1, -1.0, 1.0)  # log-loss of a row: log(1 + exp(sign * z))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:2] + theta[2]
        slope = sign / (1.0 + np.exp(-sign * z))  # d loss / dz
        loss = 0.5 * theta[:2] @ theta[:2] + C * np.logaddexp(0.0, sign * z).sum()
        return loss, np.r_[theta[:2] + C * x.T @ slope, C * slope.sum()]

    theta = minimize(objective, np.zeros(3), jac=True, method="L-BFGS-B",
                     bounds=[(0.0, None), (0.0, None), (None, None)]).x
    return {"method": "fitted", "column": positive, "features": ["logit_max", "logit_mean"],
            "coef": [float(v) for v in theta[:2]], "intercept": float(theta[2]),
            "n_breasts": int(keep.sum()), "n_positive": int(y[keep].sum())}


def derive_exam_ids(frame: pd.DataFrame) -> pd.Series:
    """One exam id per manifest row: ``source:exam_id`` from the adapter's ``exam_id`` where it gives one,
    else ``source:group`` (one exam per woman, right for sources with one visit per woman). The
    source prefix keeps two sources' ids apart in a pooled manifest."""
    index = frame.index
    source = frame["source"].astype(str) if "source" in frame.columns else pd.Series("", index=index)
    exam = frame["exam_id"].astype(str) if "exam_id" in frame.columns else pd.Series("", index=index)
    return source + ":" + exam.where(exam != "", frame["group"].astype(str))
