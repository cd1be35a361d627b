"""One self-contained ``report.html`` per evaluation or cv run: figures as inline base64 PNG, no external
JS, CSS or fonts, so it opens anywhere, offline, and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammolens.evaluate.metrics import format_value
from mammolens.evaluate.predictions import proba_of
from mammolens.utils.atomic import write_text
from mammolens.utils.provenance import git_state, package_versions

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

Thumbnail = Callable[[str], "tuple[np.ndarray, list[tuple[float, float, float]]]"]
PACKAGES = ("mammolens", "torch", "torchvision", "timm", "lightning", "numpy", "scikit-learn", "pandas")
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:24px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:12px} .figs img{width:370px;border:1px solid #ddd}
.thumbs{display:flex;flex-wrap:wrap;gap:8px} .thumb{font-size:11px;text-align:center;width:150px}
.thumb img{width:150px;height:150px;border:1px solid #ddd} .muted{color:#666;font-size:13px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto;white-space:pre-wrap}
"""


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(size: tuple[float, float] = (4.2, 3.8)) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots()


def _roc_figure(metrics: dict[str, Any], y: np.ndarray, proba: np.ndarray, classes: list[str]) -> str:
    from sklearn.metrics import roc_curve

    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="#bbb", lw=1, ls="--", label="chance")
    if len(classes) == 2:
        band = metrics.get("roc_band")
        if band:
            ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], color="C0", alpha=0.2,
                            label="95% patient-bootstrap band")
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, proba[:, 1])
            ax.plot(fpr, tpr, color="C0", label=f"ROC (AUC {format_value(metrics['auc']['value'], 'n/a')})")
            t = metrics["at_threshold"]
            if t["sensitivity"] is not None and t["specificity"] is not None:
                ax.plot(1 - t["specificity"], t["sensitivity"], "o", color="C3",
                        label=f"operating point (threshold {t['threshold']:.3f})")
    else:
        for i, name in enumerate(classes):
            yi = (y == i).astype(int)
            if 0 < yi.sum() < len(yi):
                fpr, tpr, _ = roc_curve(yi, proba[:, i])
                ax.plot(fpr, tpr, lw=1, label=f"{name} vs rest")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02),
           title="ROC")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _pr_figure(metrics: dict[str, Any], y: np.ndarray, proba: np.ndarray) -> str:
    from sklearn.metrics import precision_recall_curve

    fig, ax = _figure()
    if len(np.unique(y)) == 2:
        precision, recall, _ = precision_recall_curve(y, proba[:, 1])
        ax.step(recall, precision, where="post", color="C0",
                label=f"PR (AP {format_value(metrics['pr_auc']['value'], 'n/a')})")
        ax.axhline(float(np.mean(y == 1)), color="#bbb", ls="--", lw=1, label="prevalence")
        ax.legend(fontsize=7, loc="lower left")
    else:
        ax.text(0.5, 0.5, "undefined (one class only)", ha="center", va="center")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall")
    return _png(fig)


def _confusion_figure(cm: Sequence[Sequence[int]], classes: list[str], title: str) -> str:
    cm = np.asarray(cm)
    fig, ax = _figure((4.2, 3.8) if len(classes) < 5 else (5.2, 4.6))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 3 else 0, fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    return _png(fig)


def _reliability_figure(cal: dict[str, Any]) -> str:
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="#bbb", ls="--", lw=1, label="perfect calibration")
    bins = [b for b in cal["bins"] if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in cal["bins"]]
    ax.bar(centres, [b["observed"] or 0 for b in cal["bins"]], width=1 / cal["n_bins"] * 0.9, alpha=0.35,
           color="C0", label="observed per bin")
    ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", color="C0", ms=4)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="predicted", ylabel="observed",
           title=f"Reliability (ECE {format_value(cal['ece'])}, Brier {format_value(cal['brier'])})")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def _history_figure(history: Sequence[dict[str, Any]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.6, 3.4), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    epochs = [row.get("epoch") for row in history]
    for ax, keys, title in ((ax_loss, ("train_loss", "val_loss"), "loss"),
                            (ax_metric, ("train_acc", "val_acc", "val_auc"), "accuracy / AUC")):
        for key in keys:
            vals = [row.get(key) for row in history]
            if any(isinstance(v, (int, float)) and np.isfinite(v) for v in vals):
                ax.plot(epochs, [np.nan if v is None else v for v in vals], "o-", ms=3, label=key)
        ax.set(xlabel="epoch", title=title)
        ax.legend(fontsize=7)
    return _png(fig)


def _thumbnail(image: np.ndarray, rois: Sequence[tuple[float, float, float]], caption: str) -> str:
    """A (C, H, W) input (multi-scale crops) is shown by its channel 0, the one its ROIs are in."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    image = image[0] if image.ndim == 3 else image
    fig = Figure(figsize=(2, 2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    for x, y, r in rois:
        ax.add_patch(Circle((x, y), max(r, 3), fill=False, color="#ff3030", lw=1.5))
    ax.set_axis_off()
    return f'<div class="thumb"><img src="{_png(fig)}" alt="{html.escape(caption)}"><br>{html.escape(caption)}</div>'


def _worst(df: pd.DataFrame, classes: list[str], threshold: float, n: int) -> list[tuple[str, pd.DataFrame]]:
    """Binary: the most confident false negatives and false positives; multi-class: the most confident errors."""
    proba = proba_of(df, classes)
    y = df["label_index"].to_numpy()
    if len(classes) == 2:
        p1 = proba[:, 1]
        fn = df[(y == 1) & (p1 < threshold)].assign(_s=p1[(y == 1) & (p1 < threshold)]).sort_values("_s")
        fp = df[(y == 0) & (p1 >= threshold)].assign(_s=-p1[(y == 0) & (p1 >= threshold)]).sort_values("_s")
        return [(f"Worst false negatives ({classes[1]} scored lowest)", fn.head(n)),
                (f"Worst false positives ({classes[0]} scored highest)", fp.head(n))]
    wrong = proba.argmax(1) != y
    errors = df[wrong].assign(_s=-proba[wrong].max(1)).sort_values("_s")
    return [("Most confident errors", errors.head(n))]


def html_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain HTML table (cells escaped), e.g. for a cv run's per-fold figures in ``extra_tables``."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(ci: dict[str, Any]) -> str:
    value = format_value(ci["value"], ci.get("reason") or "not defined")
    if ci["value"] is None:
        return value
    if ci["low"] is None:
        return f"{value} (95% CI undefined: {ci['reason']})"
    return f"{value} [{ci['low']:.3f}, {ci['high']:.3f}]"


def _headline(metrics: dict[str, Any]) -> str:
    rows = [["samples / patient groups", f"{metrics['n_samples']} / {metrics['n_groups']}"],
            ["class counts", ", ".join(f"{c} {n}" for c, n in metrics["class_counts"].items())],
            ["ROC AUC" + (" (one-vs-rest macro)" if len(metrics["classes"]) > 2 else ""), _ci(metrics["auc"])]]
    if len(metrics["classes"]) == 2:
        t = metrics["at_threshold"]
        rows += [["PR AUC (average precision)", _ci(metrics["pr_auc"])],
                 [f"sensitivity at {t['threshold']:.3f}", _ci(t["sensitivity_ci"])],
                 [f"specificity at {t['threshold']:.3f}", _ci(t["specificity_ci"])]]
        within = metrics.get("within_group_auc")  # absent from metrics written before it existed
        if within and within["n_groups"]:
            rows.append([f"within-patient AUC ({within['n_groups']} groups holding both classes)", _ci(within)])
    else:
        rows += [["macro F1", _ci(metrics["macro_f1"])], ["accuracy", format_value(metrics["accuracy"])]]
        if "kappa_linear" in metrics:  # ordered classes only
            rows.append(["linearly weighted kappa", _ci(metrics["kappa_linear"])])
    cal = metrics["calibration"]
    rows += [["Brier score", format_value(cal["brier"])], ["expected calibration error", format_value(cal["ece"])]]
    return html_table(rows, ["metric", "value [95% patient-bootstrap CI]"])


def _detail_table(metrics: dict[str, Any]) -> str:
    undefined = "no samples to divide by"
    if len(metrics["classes"]) == 2:
        keys = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "f2", "tp", "fp", "fn", "tn")
        rows = [[f"threshold {metrics[k]['threshold']:.3f}" + (" (bundle)" if k == "at_threshold" else ""),
                 *(format_value(metrics[k][key], undefined) for key in keys)] for k in ("at_threshold", "at_0_5")]
        return html_table(rows, ["operating point", *keys])
    rows = [[name, *(format_value(row[k], undefined) for k in ("precision", "recall", "f1")), row["support"],
             format_value(metrics["ovr_auc"][name], "class absent or alone")]
            for name, row in metrics["per_class"].items()]
    for avg in ("macro", "weighted"):
        rows.append([f"{avg} average", *(format_value(metrics[avg][k]) for k in ("precision", "recall", "f1")),
                     metrics["n_samples"], ""])
    return html_table(rows, ["class", "precision", "recall", "F1", "support", "one-vs-rest AUC"])


def environment() -> dict[str, Any]:
    """Git commit of the mammolens checkout and package versions, for the report's footer."""
    commit, _ = git_state()
    return {"git_commit": commit or "unknown (not a git checkout)", "python": platform.python_version(),
            "packages": package_versions(PACKAGES, missing="not installed")}


def render_report(
    metrics: dict[str, Any],
    predictions: pd.DataFrame,
    *,
    title: str = "mammolens evaluation",
    subtitle: str = "",
    history: Sequence[dict[str, Any]] | None = None,
    thumbnails: Thumbnail | None = None,
    n_thumbnails: int = 6,
    command: str | None = None,
    config: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    extra_tables: dict[str, str] | None = None,
    warnings: Sequence[str] = (),
) -> str:
    """The report as one HTML string (see ``write_report``); ``warnings`` are shown first, in red."""
    import yaml

    classes = list(metrics["classes"])
    df = predictions[predictions["label_index"] >= 0]
    y, proba = df["label_index"].to_numpy(), proba_of(df, classes)
    cm = metrics["at_threshold"]["confusion_matrix"] if len(classes) == 2 else metrics["confusion_matrix"]
    cm_title = (f"Confusion at threshold {metrics['threshold']:.3f}" if len(classes) == 2 else "Confusion (argmax)")
    figs = [_roc_figure(metrics, y, proba, classes)]
    if len(classes) == 2:
        figs.append(_pr_figure(metrics, y, proba))
    figs += [_confusion_figure(cm, classes, cm_title), _reliability_figure(metrics["calibration"])]
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="muted">{html.escape(subtitle)}</p>',
             *(f'<p class="warning" style="color:#b00020;font-weight:bold">WARNING: {html.escape(w)}</p>' for w in warnings),
             "<h2>Headline</h2>", _headline(metrics),
             '<p class="muted">Confidence intervals: percentile bootstrap over patient groups '
             f"({metrics['bootstrap']['n_boot']} resamples, seed {metrics['bootstrap']['seed']}); all images of a "
             "drawn woman enter together. Undefined when there are too few groups or too few resamples hold both "
             "classes.</p>",
             "<h2>Curves</h2>", '<div class="figs">' + "".join(f'<img src="{f}">' for f in figs) + "</div>",
             "<h2>" + ("Operating points" if len(classes) == 2 else "Per-class table") + "</h2>", _detail_table(metrics)]
    for name, table in (extra_tables or {}).items():
        parts += [f"<h2>{html.escape(name)}</h2>", table]
    if history:
        parts += ["<h2>Learning curves</h2>", f'<div class="figs"><img style="width:760px" src="{_history_figure(history)}"></div>']
    if thumbnails is not None:
        for heading, rows in _worst(df, classes, metrics["threshold"], n_thumbnails):
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            if rows.empty:
                parts.append('<p class="muted">none</p>')
                continue
            cells = []
            for row in rows.to_dict("records"):
                image, rois = thumbnails(row["sample_id"])
                probs = ", ".join(f"{c} {row[f'p_{c}']:.2f}" for c in classes)
                cells.append(_thumbnail(image, rois, f"{row['sample_id']} ({row['label']}): {probs}"))
            parts.append('<div class="thumbs">' + "".join(cells) + "</div>")
        parts.append('<p class="muted">Thumbnails are the preprocessed model inputs; red circles are the annotated '
                     "regions of interest.</p>")
    env = environment()
    parts += ["<h2>Reproduce</h2>",
              f"<p>command</p><pre>{html.escape(command or '(not recorded)')}</pre>",
              f"<p>git commit {html.escape(env['git_commit'])}, Python {env['python']}</p>",
              html_table([[k, v] for k, v in env["packages"].items()], ["package", "version"])]
    if provenance:
        parts.append(f"<p>provenance</p><pre>{html.escape(json.dumps(provenance, indent=1, default=str))}</pre>")
    if config:
        parts.append(f"<p>config</p><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>")
    body = "\n".join(parts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(out_html: str | Path, metrics: dict[str, Any], predictions: pd.DataFrame, **kwargs: Any) -> Path:
    """Write ``render_report(metrics, predictions, **kwargs)`` atomically to ``out_html``.

    ``metrics`` is ``evaluate_predictions``' dict; ``predictions`` the predictions table;
    ``history`` a run's per-epoch rows (learning curves); ``thumbnails(sample_id) -> (image, rois)``
    gives the pictures of the worst errors (e.g. from the preprocessing cache).
    """
    write_text(out_html, render_report(metrics, predictions, **kwargs))
    return Path(out_html)
