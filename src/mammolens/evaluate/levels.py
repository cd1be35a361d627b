"""Breast- and exam-level figures from a film-level predictions table (``evaluate --level``, ``cv --level``).

The films' probabilities are combined by ``evaluate.exams`` (the one aggregation module); the result
is again a predictions table, one row per breast (``sample_id`` ``<exam_id>/<L|R>``) or exam, with
the woman as its ``group``, so ``evaluate_predictions`` scores it and bootstraps resample women.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mammolens.utils.errors import ConfigError, DataError
from mammolens.evaluate.exams import aggregate, derive_exam_ids, fit_aggregator
from mammolens.evaluate.predictions import EXAM_COLUMNS, predictions_frame

if TYPE_CHECKING:
    from mammolens.data.manifest import Manifest

LEVELS = ("film", "breast", "exam")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ConfigError(f"--level {level!r} is not known; known: {', '.join(LEVELS)}")
    return level


def exam_columns(manifest: Manifest) -> pd.DataFrame:
    """``exam_id, laterality, view`` of every manifest row: the adapter's ``exam_id`` where the
    manifest has one, else one exam per woman and source (``source:group``)."""
    df = manifest.df
    return pd.DataFrame({"exam_id": derive_exam_ids(df).to_numpy(),
                         "laterality": df["laterality"].astype(str).str.upper().to_numpy(),
                         "view": df["view"].astype(str).to_numpy()})


def _views(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    missing = [c for c in EXAM_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"the predictions table lacks {', '.join(missing)} (written before exams were recorded; "
                        "score it again to get breast or exam figures)")
    return pd.DataFrame({"exam_id": table["exam_id"].astype(str), "laterality": table["laterality"].astype(str),
                         "view": table["view"].astype(str), "group": table["group"].astype(str),
                         "y": table["label_index"].astype(np.int64),
                         **{f"p_{c}": table[f"p_{c}"].astype(np.float64) for c in classes}})


def level_predictions(table: pd.DataFrame, classes: Sequence[str], level: str, method: str = "max",
                      params: Mapping[str, Any] | None = None, threshold: float = 0.5) -> pd.DataFrame:
    """The film-level ``table`` at ``level``: one row per breast or exam, with ``n_views``."""
    if check_level(level) == "film":
        return table
    units = aggregate(_views(table, classes), level, method, params)
    ids = units["exam_id"] + ("/" + units["laterality"] if level == "breast" else "")
    out = predictions_frame(ids.tolist(), units["group"].tolist(), units["y"].to_numpy(),
                            units[[f"p_{c}" for c in classes]].to_numpy(), list(classes), threshold)
    out["n_views"] = units["n_views"].to_numpy()
    return out


def unit_threshold(aggregator: Mapping[str, Any] | None, film_threshold: float) -> float:
    """Where a breast or exam is called positive: the aggregator's validation-chosen threshold, else the film one."""
    chosen = (aggregator or {}).get("threshold")
    return film_threshold if chosen is None else float(chosen)


def folded_level_predictions(table: pd.DataFrame, classes: Sequence[str], level: str,
                             folds: Mapping[int, tuple[Mapping[str, Any] | None, float]]) -> pd.DataFrame:
    """Pooled out-of-fold films at ``level``: each fold's films combined by its own model's aggregator and
    decided at its threshold (``folds[fold] = (aggregator, film threshold)``); a ``fold`` column is kept.
    An exam never spans folds (its woman is in one), which is checked."""
    spans = table.groupby("exam_id")["fold"].nunique() if "exam_id" in table.columns else None
    if spans is not None and (spans > 1).any():
        raise DataError(f"exam {spans[spans > 1].index[0]!r} has films in several folds; its woman was split")
    parts = []
    for fold, part in table.groupby("fold", sort=True):
        aggregator, film_threshold = folds[int(fold)]
        aggregator = aggregator or {"method": "max"}
        units = level_predictions(part, classes, level, aggregator["method"], aggregator.get("params"),
                                  unit_threshold(aggregator, film_threshold))
        parts.append(units.assign(fold=int(fold)))
    return pd.concat(parts, ignore_index=True)


def fit_level_aggregator(validation: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """``fit_aggregator`` on a film-level predictions table of VALIDATION samples."""
    return fit_aggregator(_views(validation, classes))


def choose_aggregator(validation: pd.DataFrame, classes: Sequence[str], level: str, method: str,
                      choose: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, Any]:
    """What a bundle stores as its ``aggregator``, from its VALIDATION films only (a predictions table
    with exam columns): the method, the ``fitted`` parameters, and for a binary task at breast or exam
    level the decision threshold ``choose(y, proba)`` (the config's operating point) picks on the
    validation breasts or exams (None: the film threshold applies)."""
    check_level(level)
    params = fit_level_aggregator(validation, classes) if method == "fitted" else None
    threshold = None
    if level != "film" and len(classes) == 2:
        units = level_predictions(validation, classes, level, method, params)
        units = units[units["label_index"] >= 0]
        if units["label_index"].nunique() == 2:
            threshold = float(choose(units["label_index"].to_numpy(), units[[f"p_{c}" for c in classes]].to_numpy()))
    return {"method": method, "params": params, "level": level, "threshold": threshold}


def level_metrics(table: pd.DataFrame, classes: Sequence[str], level: str, *, method: str = "max",
                  params: Mapping[str, Any] | None = None, threshold: float = 0.5, n_boot: int = 2000,
                  seed: int = 0, ordinal: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """(metrics, level table) of the labelled units; the CIs resample women. ``ordinal``: ordered
    classes (density), which add the weighted kappa."""
    from mammolens.evaluate.summary import evaluate_predictions

    units = level_predictions(table, classes, level, method, params, threshold)
    labelled = units[units["label_index"] >= 0]
    if labelled.empty:
        raise DataError(f"no labelled {level} to evaluate")
    proba = labelled[[f"p_{c}" for c in classes]].to_numpy()
    metrics = evaluate_predictions(labelled["label_index"].to_numpy(), proba, labelled["group"].tolist(), classes,
                                   threshold, n_boot=n_boot, seed=seed, ordinal=ordinal)
    metrics.update(level=level, aggregate=method, n_films=int(len(table)),
                   label_rule=f"a {level} takes its most severe film's label (binary: positive if any film is)")
    return metrics, units


def level_tables(levels: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """``{heading: html}`` of each level's headline figures, for a report's ``extra_tables``."""
    from mammolens.evaluate.metrics import format_value
    from mammolens.evaluate.report import html_table

    def ci(figure: Mapping[str, Any]) -> str:
        if figure["value"] is None or figure["low"] is None:
            return format_value(figure["value"], figure.get("reason") or "not defined")
        return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"

    out = {}
    for level, m in (levels or {}).items():
        rows = [["units", f"{m['n_samples']} ({', '.join(f'{c} {n}' for c, n in m['class_counts'].items())}) "
                          f"from {m['n_groups']} women"],
                ["combined by", m["aggregate"] if isinstance(m["aggregate"], str) else ", ".join(m["aggregate"])],
                ["ROC AUC [95% CI, women resampled]", ci(m["auc"])]]
        if "pr_auc" in m:
            rows.append(["PR AUC", ci(m["pr_auc"])])
        if "macro_f1" in m:
            rows.append(["macro F1", ci(m["macro_f1"])])
        decided = m.get("at_fold_thresholds") or ({k: m["at_threshold"][k] for k in ("sensitivity", "specificity")}
                                                  if "at_threshold" in m else {})
        rows += [[k, format_value(v)] for k, v in decided.items()]
        out[f"{level.capitalize()} level"] = html_table(rows, ["figure", "value"])
    return out
