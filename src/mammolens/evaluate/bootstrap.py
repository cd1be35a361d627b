"""Percentile bootstrap confidence intervals that resample patient groups, not images.

The films of one woman are not independent (two views of one breast, both breasts), so an
image-level bootstrap understates the uncertainty. Each resample draws as many groups as there
are, with replacement, and takes *all* samples of every drawn group. A CI is reported as
undefined (None, with the reason) when there are too few groups for a resample distribution to
mean anything, or when the statistic is undefined in too many resamples (e.g. most draws hold
one class only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mammolens.evaluate.metrics import as_proba, decide, within_group_comparisons

MIN_GROUPS = 5  # 5 groups already allow only 126 distinct resamples; 2 allow 3
MIN_DEFINED = 0.5  # fraction of resamples in which the statistic must be defined
Statistic = Callable[[np.ndarray, np.ndarray], "float | None"]


# ---------------------------------------------------------------------- fast statistics
# scikit-learn's input checks cost milliseconds per call, which 2,000 resamples times several
# statistics turn into minutes; these numpy versions compute the same values (tests compare them
# with scikit-learn on known inputs) in microseconds.
def _binary_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest first (sklearn's _binary_clf_curve)."""
    order = np.argsort(-score, kind="mergesort")
    score, y = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tps = np.cumsum(y)[last]
    return tps, (1 + last) - tps


def fast_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """ROC AUC as metrics.roc_auc defines it (binary, or one-vs-rest macro over every class)."""
    from scipy.stats import rankdata

    if proba.shape[1] == 2:
        columns = [(y == 1, proba[:, 1])]
    else:
        columns = [(y == c, proba[:, c]) for c in range(proba.shape[1])]
    aucs = []
    for pos, score in columns:
        n1 = int(pos.sum())
        n0 = len(pos) - n1
        if n1 == 0 or n0 == 0:
            return None
        ranks = rankdata(score)
        aucs.append((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return float(np.mean(aucs))


def fast_average_precision(y: np.ndarray, proba: np.ndarray) -> float | None:
    pos = (y == 1).astype(np.int64)
    if proba.shape[1] != 2 or pos.sum() == 0 or pos.sum() == len(pos):
        return None
    tps, fps = _binary_curve(pos, proba[:, 1])
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fast_sensitivity(threshold: float) -> Statistic:
    def stat(y: np.ndarray, proba: np.ndarray) -> float | None:
        pos = y == 1
        return float((proba[pos, 1] >= threshold).mean()) if pos.any() else None

    return stat


def fast_specificity(threshold: float) -> Statistic:
    def stat(y: np.ndarray, proba: np.ndarray) -> float | None:
        neg = y == 0
        return float((proba[neg, 1] < threshold).mean()) if neg.any() else None

    return stat


def fast_macro_f1(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Macro F1 over every class, an undefined class F1 counting 0 (as metrics.macro_f1)."""
    c = proba.shape[1]
    pred = decide(proba)
    tp = np.bincount(y[pred == y], minlength=c).astype(float)
    denom = np.bincount(y, minlength=c) + np.bincount(pred, minlength=c)
    f1 = np.divide(2 * tp, denom, out=np.zeros(c), where=denom > 0)
    return float(f1.mean())


def fast_linear_kappa(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Linearly weighted Cohen's kappa of the argmax decisions (as metrics.linear_kappa)."""
    c = proba.shape[1]
    pred = decide(proba)
    observed = np.bincount(y * c + pred, minlength=c * c).reshape(c, c).astype(float)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(len(y), 1)
    weights = np.abs(np.arange(c)[:, None] - np.arange(c)[None, :]).astype(float)
    chance = float((weights * expected).sum())
    return None if chance == 0 else 1.0 - float((weights * observed).sum()) / chance


def group_draws(groups: Any, n_boot: int = 2000, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of each resample: every drawn group contributes all of its rows, once per draw."""
    groups = np.asarray(groups).astype(str)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))
    rows = np.split(order, bounds[:-1])
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        picked = rng.integers(0, len(rows), size=len(rows))
        yield np.concatenate([rows[g] for g in picked])


def _undefined_reason(n_groups: int, n_defined: int, n_boot: int) -> str | None:
    if n_groups < MIN_GROUPS:
        return f"only {n_groups} patient group(s); a bootstrap needs at least {MIN_GROUPS}"
    if n_boot == 0 or n_defined < MIN_DEFINED * n_boot:
        return f"defined in only {n_defined} of {n_boot} resamples"
    return None


def bootstrap_cis(
    statistics: dict[str, Statistic],
    y: Any,
    proba: Any,
    groups: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """``{name: {value, low, high, level, n_boot, defined_resamples, reason}}`` for each ``statistic(y, proba)``.

    ``low``/``high`` are None when undefined; ``reason`` then says why. All statistics share the
    same resamples.
    """
    y, proba, groups = np.asarray(y), as_proba(proba), np.asarray(groups).astype(str)
    values: dict[str, list[float]] = {name: [] for name in statistics}
    for idx in group_draws(groups, n_boot, seed):
        for name, stat in statistics.items():
            v = stat(y[idx], proba[idx])
            if v is not None:
                values[name].append(v)
    n_groups = len(np.unique(groups))
    tail = (1.0 - level) / 2.0
    out = {}
    for name, stat in statistics.items():
        vals = np.asarray(values[name], dtype=np.float64)
        reason = _undefined_reason(n_groups, len(vals), n_boot)
        low, high = (None, None) if reason else (float(np.quantile(vals, tail)), float(np.quantile(vals, 1 - tail)))
        out[name] = {"value": stat(y, proba), "low": low, "high": high, "level": level, "n_boot": n_boot,
                     "defined_resamples": int(len(vals)), "n_groups": n_groups, "reason": reason}
    return out


def within_group_auc_ci(y: Any, p1: Any, groups: Any, *, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Any]:
    """``metrics.within_group_auc`` with a percentile CI over resampled groups that hold both classes
    (the only groups it is computed on), in ``bootstrap_cis``' format."""
    wins, pairs = within_group_comparisons(y, p1, groups)
    n = len(pairs)
    draws = list(group_draws(np.arange(n), n_boot, seed)) if n else []
    vals = np.asarray([wins[idx].sum() / pairs[idx].sum() for idx in draws], dtype=np.float64)
    reason = _undefined_reason(n, len(vals), n_boot)
    tail = (1.0 - level) / 2.0
    low, high = (None, None) if reason else (float(np.quantile(vals, tail)), float(np.quantile(vals, 1 - tail)))
    return {"value": float(wins.sum() / pairs.sum()) if n else None, "low": low, "high": high, "level": level,
            "n_boot": n_boot, "defined_resamples": int(len(vals)), "n_groups": n,
            "reason": reason if n else "no group holds both classes"}


def roc_band(
    y: Any, p1: Any, groups: Any, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95, points: int = 101
) -> dict[str, Any] | None:
    """Pointwise bootstrap band of the ROC curve: TPR quantiles at a fixed FPR grid (None when undefined)."""
    y, p1, groups = np.asarray(y), np.asarray(p1, dtype=np.float64), np.asarray(groups).astype(str)
    grid = np.linspace(0.0, 1.0, points)
    curves = []
    for idx in group_draws(groups, n_boot, seed):
        yy = y[idx]
        if yy.min() == yy.max():
            continue
        tps, fps = _binary_curve((yy == 1).astype(np.int64), p1[idx])
        curves.append(np.interp(grid, np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]))
    if _undefined_reason(len(np.unique(groups)), len(curves), n_boot):
        return None
    curves = np.asarray(curves)
    tail = (1.0 - level) / 2.0
    return {"fpr": grid.tolist(), "tpr_low": np.quantile(curves, tail, axis=0).tolist(),
            "tpr_high": np.quantile(curves, 1 - tail, axis=0).tolist(), "level": level}
