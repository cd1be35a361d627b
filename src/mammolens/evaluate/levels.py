"""Breast- and exam-level figures from a film-level predictions table (``evaluate --level``, ``cv --level``).

The films' probabilities are combined by ``evaluate.exams`` (the one aggregation module); the result
is again a predictions table, one row per breast (``sample_id`` ``<exam_id>/<L|R>``) or exam, with
the woman as its ``group``, so ``evaluate_predictions`` scores it and bootstraps resample women.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mammolens.errors import ConfigError, DataError
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


def fit_level_aggregator(validation: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """``fit_aggregator`` on a film-level predictions table of VALIDATION samples."""
    return fit_aggregator(_views(validation, classes))


def level_metrics(table: pd.DataFrame, classes: Sequence[str], level: str, *, method: str = "max",
                  params: Mapping[str, Any] | None = None, threshold: float = 0.5, n_boot: int = 2000,
                  seed: int = 0) -> tuple[dict[str, Any], pd.DataFrame]:
    """(metrics, level table) of the labelled units; the CIs resample women."""
    from mammolens.evaluate.summary import evaluate_predictions

    units = level_predictions(table, classes, level, method, params, threshold)
    labelled = units[units["label_index"] >= 0]
    if labelled.empty:
        raise DataError(f"no labelled {level} to evaluate")
    proba = labelled[[f"p_{c}" for c in classes]].to_numpy()
    metrics = evaluate_predictions(labelled["label_index"].to_numpy(), proba, labelled["group"].tolist(), classes,
                                   threshold, n_boot=n_boot, seed=seed)
    metrics.update(level=level, aggregate=method, n_films=int(len(table)),
                   label_rule=f"a {level} takes its most severe film's label (binary: positive if any film is)")
    return metrics, units
