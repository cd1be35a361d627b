"""Building an ensemble bundle from cv runs: each run's ensemble bundle is a member, its pooled
out-of-fold ``predictions.csv`` the only data the combiner, threshold and temperature see.

A cv run directory holds ``fold{k}/bundle/``, ``predictions.csv`` (pooled out-of-fold),
``ensemble/`` (the mean of its fold bundles), ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.bundle import save_ensemble
from mammolens.evaluate.calibration import apply_temperature
from mammolens.evaluate.ensembles import combiner_output, fit_stacker, nested_stacking_proba
from mammolens.evaluate.predictions import proba_of, read_predictions
from mammolens.evaluate.thresholds import operating_point
from mammolens.utils.errors import ConfigError, DataError


def run_member(run: str | Path) -> tuple[Path, Path]:
    """(member bundle dir, out-of-fold predictions.csv) of a cv run directory."""
    run = Path(run)
    oof = run / "predictions.csv"
    for name in ("ensemble", "bundle"):
        if (run / name / "bundle.json").is_file() and oof.is_file():
            return run / name, oof
    raise DataError("not a cv run: expected predictions.csv (pooled out-of-fold) and ensemble/ (or bundle/)",
                    path=run)


def served_output(member: Path, oof_proba: np.ndarray) -> np.ndarray:
    """A member's out-of-fold probabilities as the member serves them. A run's ``ensemble/`` applies its
    own temperature on top of its fold models' (which wrote the rows at theirs); a plain ``bundle/``
    wrote them as it serves them."""
    import json

    path = member / "bundle.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        temperature = float(manifest["temperature"]) if manifest.get("kind") == "ensemble" else 1.0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read its temperature ({exc})", path=path) from None
    return oof_proba if temperature == 1.0 else apply_temperature(oof_proba, temperature)


def pooled_oof(prediction_files: Sequence[Path]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[str]]:
    """Members' out-of-fold probabilities aligned on sample_id (averaged over repeats), labels, groups, classes."""
    frames, classes = [], None
    for path in prediction_files:
        df, found = read_predictions(path, classes)
        classes = classes or found
        df = df[df["label_index"] >= 0]
        cols = [f"p_{c}" for c in classes]
        frames.append((path, df.groupby("sample_id", sort=True).agg(
            {**{c: "mean" for c in cols}, "group": "first", "label_index": "first"})))
    ids = frames[0][1].index
    for path, df in frames[1:]:
        if not df.index.equals(ids):
            raise DataError(f"its out-of-fold samples differ from those of {frames[0][0]} "
                            "(stacking needs every member scored on the same samples)", path=path)
    first = frames[0][1]
    for path, df in frames[1:]:
        if not (df["label_index"].to_numpy() == first["label_index"].to_numpy()).all():
            raise DataError(f"its labels differ from those of {frames[0][0]} (a different task?)", path=path)
    probas = [proba_of(df, classes) for _, df in frames]
    return probas, first["label_index"].to_numpy(np.int64), first["group"].astype(str).to_numpy(), classes


def build_ensemble(
    out_dir: str | Path, runs: Sequence[str | Path], method: str = "logreg", *, seed: int = 0,
    beta: float = 2.0, target_sensitivity: float | None = None, n_boot: int = 2000,
) -> tuple[Path, dict[str, Any]]:
    """An ensemble bundle of the runs' ensembles, combined by ``method`` (mean or a stacker).

    The combiner is fitted on the pooled out-of-fold predictions; threshold and temperature are
    chosen on held-out combiner outputs (the mean needs no fitting, so on its out-of-fold mean;
    a stacker's on a patient-grouped cross-validation of the stacker itself).
    Returns the bundle path and the metrics of those held-out outputs.
    """
    from mammolens.evaluate.summary import evaluate_predictions

    if not runs:
        raise ConfigError("give at least one cv run directory")
    members = [run_member(r) for r in runs]
    probas, y, groups, classes = pooled_oof([oof for _, oof in members])
    # The combiner is served each member's output, which is its out-of-fold output at the member's
    # own temperature (a run's ensemble/ applies its temperature to its folds' probabilities): fit it on that.
    probas = [served_output(bundle, p) for (bundle, _), p in zip(members, probas)]
    if method == "mean":
        combiner = {"method": "mean"}
        held_out = combiner_output(combiner, probas)
    else:
        combiner = fit_stacker(method, probas, y, groups, seed)
        held_out = nested_stacking_proba(method, probas, y, groups, seed)
    temperature, threshold = operating_point(y, held_out, "sensitivity" if target_sensitivity is not None else "fbeta",
                                             beta=beta, target_sensitivity=target_sensitivity)
    held_out = apply_temperature(held_out, temperature)
    metrics = evaluate_predictions(y, held_out, groups, classes, threshold, n_boot=n_boot, seed=seed)
    out = save_ensemble(
        out_dir, [b for b, _ in members], combiner=combiner, threshold=threshold, temperature=temperature,
        metrics={"held_out": {"predictions": "out-of-fold mean" if method == "mean" else "nested cv of the stacker",
                              **{k: metrics[k] for k in ("n_samples", "n_groups", "auc")}}},
        provenance={"stack": method, "seed": seed, "beta": beta, "target_sensitivity": target_sensitivity,
                    "fitted_on": [str(Path(oof).resolve()) for _, oof in members]},
    )
    return out, metrics
