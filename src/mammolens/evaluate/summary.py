"""``evaluate_predictions``: every figure of one evaluation (the content of metrics.json), and its table.

The single entry point that ``evaluate``, ``cv`` (on pooled out-of-fold predictions) and
ensembles share, so a number means the same thing wherever it is printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mammolens.evaluate import bootstrap as b
from mammolens.evaluate import metrics as m
from mammolens.evaluate.calibration import brier_score, reliability
from mammolens.utils.errors import DataError


def evaluate_predictions(
    y: Any,
    proba: Any,
    groups: Sequence[str],
    classes: Sequence[str],
    threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    ordinal: bool = False,
) -> dict[str, Any]:
    """Metrics of probabilities ``proba`` (N, C) against class indices ``y`` with patient ``groups``.

    Binary: AUC, PR AUC, sensitivity and specificity at ``threshold`` with patient-bootstrap CIs,
    the ROC band, threshold metrics at ``threshold`` and at 0.5. Multi-class: per-class table,
    one-vs-rest AUCs, macro AUC and macro F1 with CIs, and for ``ordinal`` classes (density) the linearly
weighted kappa with its CI. Both: Brier score, ECE, reliability bins.
    Undefined values are None.
    """
    y, proba = np.asarray(y, dtype=np.int64), m.as_proba(proba)
    groups = np.asarray(groups).astype(str)
    classes = [str(c) for c in classes]
    if not (len(y) == len(proba) == len(groups)):
        raise DataError(f"{len(y)} labels, {len(proba)} predictions and {len(groups)} groups do not line up")
    if proba.shape[1] != len(classes):
        raise DataError(f"{proba.shape[1]} probabilities per sample for {len(classes)} classes")
    if len(y) == 0 or y.min() < 0 or y.max() >= len(classes):
        raise DataError("no labelled samples to evaluate" if len(y) == 0 else "labels must be class indices")
    counts = np.bincount(y, minlength=len(classes))
    out: dict[str, Any] = {
        "classes": classes,
        "n_samples": int(len(y)),
        "n_groups": int(len(np.unique(groups))),
        "class_counts": {c: int(n) for c, n in zip(classes, counts)},
        "threshold": float(threshold),
        "bootstrap": {"unit": "patient group", "n_boot": n_boot, "seed": seed, "level": 0.95},
    }
    if len(classes) == 2:
        stats = {"auc": b.fast_auc, "pr_auc": b.fast_average_precision,
                 "sensitivity": b.fast_sensitivity(threshold), "specificity": b.fast_specificity(threshold)}
        cis = b.bootstrap_cis(stats, y, proba, groups, n_boot=n_boot, seed=seed)
        at_threshold = m.binary_at_threshold(y, proba, threshold)
        _point(cis, counts, classes, auc=m.roc_auc(y, proba), pr_auc=m.pr_auc(y, proba),
               sensitivity=at_threshold["sensitivity"], specificity=at_threshold["specificity"])
        out.update(
            auc=cis["auc"],
            pr_auc=cis["pr_auc"],
            at_threshold={**at_threshold,
                          "sensitivity_ci": cis["sensitivity"], "specificity_ci": cis["specificity"]},
            at_0_5=m.binary_at_threshold(y, proba, 0.5),
            roc_band=b.roc_band(y, proba[:, 1], groups, n_boot=n_boot, seed=seed),
            within_group_auc=b.within_group_auc_ci(y, proba[:, 1], groups, n_boot=n_boot, seed=seed),
        )
    else:
        stats = {"auc": b.fast_auc, "macro_f1": b.fast_macro_f1}
        points = {"auc": m.roc_auc(y, proba), "macro_f1": m.macro_f1(y, proba)}
        if ordinal:
            stats["kappa_linear"], points["kappa_linear"] = b.fast_linear_kappa, m.linear_kappa(y, proba)
        cis = b.bootstrap_cis(stats, y, proba, groups, n_boot=n_boot, seed=seed)
        _point(cis, counts, classes, **points)
        out.update(**{k: cis[k] for k in stats}, ovr_auc=m.ovr_aucs(y, proba, classes),
                   **m.multiclass_table(y, proba, classes))
    out["calibration"] = {"brier": brier_score(y, proba), **reliability(y, proba)}
    return out


def _point(cis: dict[str, dict[str, Any]], counts: np.ndarray, classes: list[str], **values: float | None) -> None:
    """Point estimates from the scikit-learn functions; a None one says which classes are missing."""
    present = [c for c, n in zip(classes, counts) if n]
    for name, value in values.items():
        cis[name]["value"] = value
        if value is None:
            cis[name]["reason"] = (f"only {', '.join(present)} present" if len(present) < len(classes)
                                   else "not defined on these samples")


def _ci_text(ci: dict[str, Any]) -> str:
    value = m.format_value(ci["value"], ci.get("reason") or "not defined")
    if ci["value"] is None:
        return value
    if ci["low"] is None:
        return f"{value} [95% CI undefined ({ci['reason']})]"
    return f"{value} [{ci['low']:.3f}, {ci['high']:.3f}]"


def render_table(metrics: dict[str, Any], threshold_label: str = "the bundle threshold") -> str:
    """The short text table the CLI prints."""
    counts = ", ".join(f"{c} {n}" for c, n in metrics["class_counts"].items())
    lines = [f"{metrics['n_samples']} samples from {metrics['n_groups']} patient groups ({counts})",
             f"  ROC AUC{' (one-vs-rest macro)' if len(metrics['classes']) > 2 else ''}: {_ci_text(metrics['auc'])}"]
    if len(metrics["classes"]) == 2:
        lines.append(f"  PR AUC: {_ci_text(metrics['pr_auc'])}")
        within = metrics.get("within_group_auc")
        if within and within["n_groups"]:
            lines.append(f"  within-patient AUC ({within['n_groups']} patient groups holding both classes): "
                         f"{_ci_text(within)}")
        rows = (("at_threshold", threshold_label), ("at_0_5", "the fixed threshold"))
        for key, title in rows[: 1 if metrics["at_threshold"]["threshold"] == 0.5 else 2]:
            t = metrics[key]
            vals = "  ".join(f"{k} {m.format_value(t[k], 'no samples to divide by')}"
                             for k in ("sensitivity", "specificity", "precision", "npv", "f1", "f2", "accuracy"))
            lines.append(f"  at {title} {t['threshold']:.3f}: {vals}  (TP {t['tp']} FP {t['fp']} FN {t['fn']} TN {t['tn']})")
    else:
        lines.append(f"  macro F1: {_ci_text(metrics['macro_f1'])}  accuracy {m.format_value(metrics['accuracy'])}")
        if "kappa_linear" in metrics:
            lines.append(f"  linearly weighted kappa: {_ci_text(metrics['kappa_linear'])}")
        for name, row in metrics["per_class"].items():
            vals = "  ".join(f"{k} {m.format_value(row[k], 'no samples to divide by')}" for k in ("precision", "recall", "f1"))
            lines.append(f"    {name:>10}: {vals}  support {row['support']}")
    cal = metrics["calibration"]
    lines.append(f"  Brier {m.format_value(cal['brier'])}  ECE {m.format_value(cal['ece'])}")
    return "\n".join(lines)
