"""Paired comparisons of `mammolens cv` runs on the same folds, and a film-minus-partner diagnostic.

Two runs of one split (same samples, same patient groups) differ by less than their two CIs suggest,
because most of each CI is which women happen to be drawn. ``RUN_A RUN_B`` resamples the women once
per draw and reports A - B with a percentile CI for the pooled AUC, the within-patient AUC (binary
tasks) and the macro F1 (argmax decisions, as the cv table's). ``--partner RUN`` scores each film of a
binary run by its P(class 1) minus that of the other film of its group (groups of exactly two films):
a fixed rule, nothing fitted, that keeps the within-patient ordering and removes the between-woman part.

    python benchmarks/cv_compare.py /work/runs/q14-na-768 /work/runs/q14-na-384
    python benchmarks/cv_compare.py --partner /work/runs/q14-na-768
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mammolens.evaluate.bootstrap import bootstrap_cis, fast_auc, fast_macro_f1, group_draws
from mammolens.evaluate.metrics import within_group_comparisons
from mammolens.evaluate.predictions import proba_of, read_predictions


def load(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(labels, probabilities, groups, sample ids) of the run's first repeat, ordered by sample id."""
    df, classes = read_predictions(run / "predictions.csv")
    df = df[df["repeat"] == 0].sort_values("sample_id")
    return df["label_index"].to_numpy(), proba_of(df, classes), df["group"].to_numpy(str), list(df["sample_id"])


def interval(values: list[float], level: float = 0.95) -> list[float]:
    tail = (1 - level) / 2
    return [round(float(np.quantile(values, tail)), 3), round(float(np.quantile(values, 1 - tail)), 3)]


def paired(a: Path, b: Path, n_boot: int, seed: int) -> dict:
    ya, pa, ga, ids_a = load(a)
    yb, pb, gb, ids_b = load(b)
    if ids_a != ids_b or not (ya == yb).all() or not (ga == gb).all():
        raise SystemExit(f"{a} and {b} do not hold the same samples, labels and groups: not a paired comparison")
    stats = {"macro_f1": fast_macro_f1}
    if pa.shape[1] == 2:
        stats["auc"] = fast_auc
    out: dict = {"a": str(a), "b": str(b), "n_boot": n_boot}
    diffs: dict[str, list[float]] = {k: [] for k in stats}
    for idx in group_draws(ga, n_boot, seed):
        for name, stat in stats.items():
            va, vb = stat(ya[idx], pa[idx]), stat(ya[idx], pb[idx])
            if va is not None and vb is not None:
                diffs[name].append(va - vb)
    for name, stat in stats.items():
        out[name] = {"a": round(stat(ya, pa), 3), "b": round(stat(ya, pb), 3),
                     "a_minus_b": round(stat(ya, pa) - stat(ya, pb), 3), "ci": interval(diffs[name])}  # fmt: skip
    if pa.shape[1] == 2:  # within-patient AUC: only the groups holding both classes, resampled
        (wa, na), (wb, nb) = within_group_comparisons(ya, pa[:, 1], ga), within_group_comparisons(ya, pb[:, 1], ga)
        draws = group_draws(np.arange(len(na)), n_boot, seed)
        d = [wa[i].sum() / na[i].sum() - wb[i].sum() / nb[i].sum() for i in draws]
        out["within_patient_auc"] = {"a": round(wa.sum() / na.sum(), 3), "b": round(wb.sum() / nb.sum(), 3),
                                     "groups": len(na), "a_minus_b": round(wa.sum() / na.sum() - wb.sum() / nb.sum(), 3),
                                     "ci": interval(d)}  # fmt: skip
    return out


def partner(run: Path, n_boot: int, seed: int) -> dict:
    y, proba, groups, _ = load(run)
    if proba.shape[1] != 2:
        raise SystemExit(f"{run}: --partner is for binary runs")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    keep = counts[inverse] == 2
    y, p1, groups, inverse = y[keep], proba[keep, 1], groups[keep], inverse[keep]
    other = np.bincount(inverse, weights=p1)[inverse] - p1
    scores = {"own": p1, "own_minus_partner": (p1 - other + 1) / 2}  # mapped into [0, 1], order kept
    out: dict = {"run": str(run), "films_in_pairs": int(keep.sum()), "groups": len(np.unique(groups))}
    for name, s in scores.items():
        ci = bootstrap_cis({"auc": fast_auc}, y, np.stack([1 - s, s], 1), groups, n_boot=n_boot, seed=seed)["auc"]
        out[name] = {"auc": round(ci["value"], 3), "ci": [round(ci["low"], 3), round(ci["high"], 3)]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="RUN_A RUN_B, or one RUN with --partner")
    ap.add_argument("--partner", action="store_true")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.partner:
        rows = [partner(run, args.n_boot, args.seed) for run in args.runs]
    elif len(args.runs) == 2:
        rows = [paired(*args.runs, args.n_boot, args.seed)]
    else:
        raise SystemExit("give two runs to compare, or --partner and one or more runs")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
