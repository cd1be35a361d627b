"""``predictions.csv``: one row per scored sample, the exchange format of evaluate, cv and stacking.

Columns: ``sample_id, group, label, label_index, p_<class>`` (one per class, in the bundle's
class order), ``decision``, and optionally ``fold`` and ``repeat`` (pooled out-of-fold
predictions of a cv run) and ``exam_id, laterality, view`` (which exam and breast a film shows, so
breast- and exam-level figures come from this table alone: ``evaluate.levels``). ``label`` is
empty and ``label_index`` -1 for an unlabelled sample.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammolens.evaluate.metrics import as_proba, decide
from mammolens.utils.atomic import write_text
from mammolens.utils.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

BASE_COLUMNS = ("sample_id", "group", "label", "label_index")
OPTIONAL_COLUMNS = ("fold", "repeat")
EXAM_COLUMNS = ("exam_id", "laterality", "view")


def predictions_frame(
    sample_ids: Sequence[str],
    groups: Sequence[str],
    labels: Any,
    proba: Any,
    classes: Sequence[str],
    threshold: float = 0.5,
    *,
    fold: Any = None,
    repeat: Any = None,
    exams: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The predictions table; ``labels`` are class indices (-1: unlabelled); ``exams``: the rows'
    ``EXAM_COLUMNS``, aligned with them (``levels.exam_columns`` of the manifest)."""
    import pandas as pd

    proba, labels = as_proba(proba), np.asarray(labels, dtype=np.int64)
    if not (len(sample_ids) == len(groups) == len(labels) == len(proba)):
        raise DataError(f"predictions: {len(sample_ids)} ids, {len(groups)} groups, {len(labels)} labels, "
                        f"{len(proba)} probability rows")
    if proba.shape[1] != len(classes):
        raise DataError(f"predictions: {proba.shape[1]} probabilities per row for {len(classes)} classes")
    df = pd.DataFrame({
        "sample_id": [str(s) for s in sample_ids],
        "group": [str(g) for g in groups],
        "label": [classes[i] if i >= 0 else "" for i in labels],
        "label_index": labels,
    })
    for i, name in enumerate(classes):
        df[f"p_{name}"] = proba[:, i]
    df["decision"] = [classes[i] for i in decide(proba, threshold)]
    for name, value in (("fold", fold), ("repeat", repeat)):
        if value is not None:
            df[name] = np.broadcast_to(np.asarray(value, dtype=np.int64), (len(df),))
    if exams is not None:
        if len(exams) != len(df):
            raise DataError(f"predictions: {len(exams)} exam rows for {len(df)} samples")
        for name in EXAM_COLUMNS:
            df[name] = exams[name].astype(str).to_numpy()
    return df


def write_predictions(path: str | Path, df: pd.DataFrame) -> Path:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, float_format="%.12g")  # 12 digits: a calibrated model can be near 0.5 everywhere, and ties would change the AUC
    write_text(path, buffer.getvalue())
    return Path(path)


def read_predictions(path: str | Path, classes: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The table and its classes (from the ``p_`` columns); checked against ``classes`` when given."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError("predictions file not found", path=path)
    try:
        df = pd.read_csv(path, dtype={"sample_id": str, "group": str, "label": str, **dict.fromkeys(EXAM_COLUMNS, str)}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"not a readable CSV ({str(exc).splitlines()[0]})", path=path) from None
    missing = [c for c in (*BASE_COLUMNS, "decision") if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", path=path)
    found = [c[2:] for c in df.columns if c.startswith("p_")]
    if len(found) < 2:
        raise DataError("needs one p_<class> column per class (at least 2)", path=path)
    if classes is not None and list(classes) != found:
        raise DataError(f"classes {found} do not match the expected {list(classes)}", path=path)
    proba = df[[f"p_{c}" for c in found]]
    if not all(pd.api.types.is_numeric_dtype(proba[c]) for c in proba) or not np.isfinite(proba.to_numpy()).all():
        raise DataError("p_ columns must hold finite numbers", path=path)
    return df, found


def proba_of(df: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    return df[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
