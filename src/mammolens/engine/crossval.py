"""``mammolens cv``: patient-grouped k-fold cross-validation whose held-out folds are touched once.

For each repeat (split seed ``data.split.seed + r``) the task's samples are cut into k
patient-grouped, stratified folds. Fold i is held out; from the other folds an inner
patient-grouped validation part is taken for early stopping, the temperature and the operating
threshold; the model then scores fold i once. The pooled out-of-fold predictions give the
headline metrics with patient-bootstrap CIs; the fold bundles become a mean ensemble bundle.

The ensemble's temperature and threshold: the mean of k fold models is never out of fold, so with
``ensemble_part`` (``--ensemble-part``) a patient-grouped part is set aside before the folds are cut,
no fold model trains or validates on it, and the ensemble's operating point is fitted on the
ensemble's own output there (what it serves). Without it they come from the pooled out-of-fold
predictions of single fold models, an approximation the ensemble records as such. A fold that
finished (its ``oof.csv`` written last) is never trained again, so an interrupted run resumes.

out/
  cv.json                     what the run started with (refuses a resume with other settings), and
                              each fold's membership (refuses reusing a fold the splitter now cuts otherwise)
  repeat{r}/fold{i}/          a run folder per fold: training/, bundle/, oof.csv
  predictions.csv             pooled out-of-fold predictions of repeat 0 (fold, repeat columns)
  predictions-all.csv         every repeat's (with --repeats > 1)
  metrics.json, report.html   pooled metrics (+ per-fold table, + mean ± sd over repeats)
  ensemble/                   mean of repeat 0's fold bundles (its operating point: see above)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolens.bundle import load_bundle, save_mean_ensemble
from mammolens.data.splits import Split, check_no_leakage, make_holdout, make_kfold
from mammolens.engine.config import ExperimentConfig, first_difference, preprocess_config
from mammolens.engine.run_dir import claim_output, clear_run_dir, open_output, read_record, training_history
from mammolens.engine.sources import task_samples
from mammolens.engine.trainers import choose_operating_point, train_on_parts
from mammolens.evaluate.levels import exam_columns, level_tables
from mammolens.evaluate.metrics import roc_auc
from mammolens.evaluate.predict import predict_manifest
from mammolens.evaluate.predictions import predictions_frame, read_predictions, write_predictions
from mammolens.evaluate.report import write_report
from mammolens.evaluate.summary import evaluate_predictions, render_table
from mammolens.preprocess import PreprocessCache
from mammolens.utils import atomic
from mammolens.utils.configuration import to_dict
from mammolens.utils.errors import ConfigError

RECORD = "cv.json"
DONE = "oof.csv"  # a fold's out-of-fold predictions, written last: its presence means the fold is finished


def fold_parts(manifest, labels: np.ndarray, *, folds: int, seed: int, inner_val: float, task: str):  # noqa: ANN001, ANN201
    """For each fold: {"train", "val", "test"} row indices; test is the held-out fold, val an inner
    patient-grouped stratified part of the other folds (it never holds a held-out patient)."""
    outer = make_kfold(manifest, labels, k=folds, seed=seed, task=task)
    index = {sid: i for i, sid in enumerate(manifest.df["sample_id"])}
    out = []
    for i in range(folds):
        train_ids, test_ids = outer.fold(i)
        pool = np.array(sorted(index[s] for s in train_ids))
        sub = manifest.subset(pool.tolist())
        inner = make_holdout(sub, labels[pool], val=inner_val, test=0.0, seed=seed + i, task=task)
        val = pool[inner.indices(sub, "val")]
        train = pool[inner.indices(sub, "train")]
        parts = {"train": train, "val": val, "test": np.array(sorted(index[s] for s in test_ids))}
        _check_disjoint_groups(manifest, parts)
        out.append(parts)
    return out


def _check_disjoint_groups(manifest, parts: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    ids = manifest.df["sample_id"].to_numpy()
    split = Split(parts={k: ids[v].tolist() for k, v in parts.items()}, seed=0, manifest_hash="", kind="holdout")
    check_no_leakage(manifest, split)


def run_cv(cfg: ExperimentConfig, out_dir: str | Path, *, folds: int = 5, repeats: int = 1, inner_val: float = 0.2,
           resume: bool = False, fresh: bool = False, n_boot: int = 2000, progress: bool = True,
           command: str | None = None, ensemble_part: float = 0.0) -> dict[str, Any]:
    """Cross-validate ``cfg``; returns the pooled metrics written to ``metrics.json``. ``ensemble_part``:
    the share of women set aside for the ensemble's operating point (see the module docstring)."""
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}")
    if not 0 < inner_val < 1:
        raise ConfigError(f"--inner-val must lie in (0, 1), got {inner_val}")
    if not 0 <= ensemble_part < 1:
        raise ConfigError(f"--ensemble-part must lie in [0, 1), got {ensemble_part}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    claim_output(out, "cv", resume=resume, fresh=fresh, resumable=True)  # before any data is read
    manifest, labels, task = task_samples(cfg, progress=progress)
    record = {"config": to_dict(cfg), "folds": folds, "inner_val": inner_val, "manifest_hash": manifest.content_hash(),
              "ensemble_part": ensemble_part}  # fmt: skip
    if resume:
        _check_resume(out, record)
    open_output(out, "cv", fresh=fresh)  # cv.json (with the folds' membership) is written once they are cut
    classes = list(task.classes)
    groups = manifest.df["group"].to_numpy()
    sample_ids = manifest.df["sample_id"].tolist()
    reserved, pool = _set_aside(manifest, labels, ensemble_part, cfg.data.split.seed, task.name)
    plans = [_folds_of(manifest, labels, pool, folds=folds, seed=cfg.data.split.seed + r, inner_val=inner_val,
                       task=task.name) for r in range(repeats)]  # fmt: skip
    membership = _check_membership(out, {str(r): [fold_membership(sample_ids, parts) for parts in plan]
                                         for r, plan in enumerate(plans)})  # fmt: skip
    atomic.write_json(out / RECORD, {**record, "repeats": repeats, "membership": membership,
                                     "ensemble_part_samples": sorted(sample_ids[j] for j in reserved)})
    per_fold, pooled = [], []
    for r, plan in enumerate(plans):
        for i, parts in enumerate(plan):
            fold_dir = out / f"repeat{r}" / f"fold{i}"
            if not (fold_dir / DONE).is_file():
                _train_fold(cfg, manifest, labels, task, parts, fold_dir, sample_ids, groups, classes, r, i, progress)
            df, _ = read_predictions(fold_dir / DONE, classes)
            pooled.append(df)
            bundle = json.loads((fold_dir / "bundle" / "bundle.json").read_text())
            per_fold.append(_fold_row(r, i, parts, df, classes, bundle))
    everything = _with_exams(pd.concat(pooled, ignore_index=True), manifest)
    first = everything[everything["repeat"] == 0]
    y, proba = first["label_index"].to_numpy(), _proba(first, classes)
    # Threshold-free metrics of the pooled rows (and their figures at 0.5); the operating point that
    # counts is each fold model's own, validation-chosen one: the decisions column.
    metrics = evaluate_predictions(y, proba, first["group"].astype(str).tolist(), classes,
                                   threshold=0.5, n_boot=n_boot, seed=cfg.data.split.seed, ordinal=task.ordinal)
    metrics["at_fold_thresholds"] = _decision_metrics(first, classes)
    metrics["folds"] = per_fold
    if repeats > 1:
        metrics["repeats"] = _repeat_summary(everything, classes, n_boot=0)
    members = [out / "repeat0" / f"fold{i}" / "bundle" for i in range(folds)]
    provenance = {"cv": str(out), "folds": folds, "manifest_hash": record["manifest_hash"]}
    ens_metrics = {"pooled_oof": {k: metrics.get(k) for k in ("auc", "macro_f1", "kappa_linear")
                                  if k != "kappa_linear" or k in metrics}}
    if len(reserved):  # the ensemble's own output on women no fold model saw
        save_mean_ensemble(out / "ensemble", members, threshold=0.5, temperature=1.0, provenance=provenance)
        part = manifest.subset(reserved.tolist())
        served = predict_manifest(load_bundle(out / "ensemble"), part, cfg.cache_dir, workers=cfg.workers,
                                  progress=progress)  # fmt: skip
        point = choose_operating_point(cfg.operating_point, labels[reserved], served)
        fitted_on = (f"the ensemble's own output on {len(reserved)} samples of {len(set(groups[reserved]))} women set "
                     "aside before the folds (--ensemble-part)")  # fmt: skip
        ens_metrics["ensemble_part"] = {"n": int(len(reserved)), "auc": roc_auc(labels[reserved], served)}
        aggregated_on = predictions_frame(part.df["sample_id"].tolist(), part.df["group"].tolist(), labels[reserved],
                                          served, classes, exams=exam_columns(part))
    else:
        point = choose_operating_point(cfg.operating_point, y, proba)
        fitted_on = ("pooled out-of-fold outputs of single fold models: an approximation, the mean of the fold "
                     "models is never out of fold (--ensemble-part fits it on the ensemble's own output)")  # fmt: skip
        aggregated_on = first
    save_mean_ensemble(out / "ensemble", members, threshold=point.threshold, temperature=point.temperature,
                       metrics=ens_metrics, provenance={**provenance, "operating_point_fitted_on": fitted_on},
                       aggregator=_ensemble_aggregator(cfg, task, aggregated_on, classes, point.temperature))
    metrics["ensemble"] = {"path": str(out / "ensemble"), "threshold": point.threshold,
                           "temperature": point.temperature, "operating_point_fitted_on": fitted_on,
                           **({"ensemble_part": ens_metrics["ensemble_part"]} if len(reserved) else {})}  # fmt: skip
    level_table = None
    if cfg.exams.level != "film":
        metrics["levels"], level_table = _level_metrics(cfg, task, first, classes, out, n_boot)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["notes"] = list(manifest.notes)
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", preprocess_config(cfg))  # built by the folds
    write_predictions(out / "predictions.csv", first)
    if repeats > 1:
        write_predictions(out / "predictions-all.csv", everything)
    if level_table is not None:
        write_predictions(out / f"predictions-{cfg.exams.level}.csv", level_table)
    atomic.write_json(out / "metrics.json", metrics)
    write_report(out / "report.html", metrics, first, title=f"mammolens cv: {cfg.name}",
                 subtitle=f"{folds}-fold patient-grouped cross-validation, {task.name} ({task.unit} level), "
                          f"{len(first)} samples; pooled out-of-fold predictions",
                 command=command, config=to_dict(cfg), history=training_history(members[0]),
                 thumbnails=lambda sid: (cache.load(sid), cache.load_rois(sid)),
                 extra_tables={"At each fold model's validation-chosen threshold": _at_table(metrics["at_fold_thresholds"]),
                               "Per fold": _fold_table(per_fold), **level_tables(metrics.get("levels"))})
    return metrics


def held_out_bundles(cv_dir: str | Path) -> dict[Path, set[str]]:
    """A finished cv run's fold bundles (repeat 0), each with the sample ids it held out: what scores
    a sample out of fold (explanations, contact sheets) without a model that trained on it."""
    cv_dir = Path(cv_dir)
    if not (cv_dir / RECORD).is_file():
        raise ConfigError(f"{cv_dir}: not a mammolens cv run (no {RECORD})")
    df, _ = read_predictions(cv_dir / "predictions.csv")
    if "fold" not in df.columns:
        raise ConfigError(f"{cv_dir / 'predictions.csv'}: no fold column (not written by mammolens cv)")
    folds = {}
    for fold, part in df.groupby("fold"):
        bundle = cv_dir / "repeat0" / f"fold{int(fold)}" / "bundle"
        if not (bundle / "bundle.json").is_file():
            raise ConfigError(f"{bundle}: the fold's bundle is missing")
        folds[bundle] = set(part["sample_id"].astype(str))
    return folds


def _set_aside(manifest, labels: np.ndarray, share: float, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(rows set aside for the ensemble's operating point, rows the folds are cut from): by whole women,
    stratified; nothing set aside when ``share`` is 0."""
    everything = np.arange(len(manifest))
    if not share:
        return everything[:0], everything
    split = make_holdout(manifest, labels, val=share, test=0.0, seed=seed, task=task)
    return split.indices(manifest, "val"), split.indices(manifest, "train")


def _folds_of(manifest, labels: np.ndarray, pool: np.ndarray, **kwargs: Any) -> list[dict[str, np.ndarray]]:  # noqa: ANN001
    """``fold_parts`` of the rows ``pool``, as row indices of the whole manifest."""
    if len(pool) == len(manifest):
        return fold_parts(manifest, labels, **kwargs)
    sub = manifest.subset(pool.tolist())
    return [{k: pool[v] for k, v in parts.items()} for parts in fold_parts(sub, labels[pool], **kwargs)]


def fold_membership(sample_ids: list[str], parts: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The sample ids a fold held out ("test") and validated on ("val"); it trained on the rest."""
    return {part: sorted(sample_ids[j] for j in parts[part]) for part in ("test", "val")}


def _check_membership(out: Path, membership: dict[str, list[dict[str, list[str]]]]) -> dict[str, Any]:
    """Every finished fold must hold the samples it was trained with: its out-of-fold rows are reused,
    so a fold recomputed otherwise (another scikit-learn, another splitter) would pool rows scored
    by a model that trained on them. Returns the membership to record (earlier repeats kept)."""
    path = out / RECORD
    stored = json.loads(path.read_text(encoding="utf-8")).get("membership", {}) if path.is_file() else {}
    for r, folds in membership.items():
        for i, now in enumerate(folds):
            done = out / f"repeat{r}" / f"fold{i}" / DONE
            if not done.is_file():
                continue
            was = stored[r][i] if r in stored else None  # the fold count is a checked setting
            if was is None:  # recorded before membership was: the fold's own out-of-fold rows say what it held out
                df, _ = read_predictions(done)
                was = {"test": sorted(df["sample_id"].astype(str)), "val": now["val"]}
            for part in ("test", "val"):
                if was[part] != now[part]:
                    moved = sorted(set(was[part]) ^ set(now[part]))
                    raise ConfigError(
                        f"repeat {r} fold {i}: its {part} part would now hold other samples than when it was trained "
                        f"({len(moved)} differ, e.g. {moved[0]!r}), so its finished out-of-fold rows cannot be reused; "
                        "the folds are not reproducible here (another scikit-learn or splitter?): pass --fresh",
                        path=path)  # fmt: skip
    return {**stored, **membership}


def _train_fold(cfg, manifest, labels, task, parts, fold_dir, sample_ids, groups, classes, r, i, progress) -> None:  # noqa: ANN001
    clear_run_dir(fold_dir)  # an interrupted fold starts over; finished folds are never touched
    trained = train_on_parts(cfg, manifest, labels, task, parts, fold_dir, progress=progress,
                             provenance={"cv_fold": i, "cv_repeat": r})
    test = parts["test"]
    df = predictions_frame([sample_ids[j] for j in test], groups[test].tolist(), labels[test], trained.probas["test"],
                           classes, threshold=trained.bundle.threshold, fold=i, repeat=r)
    write_predictions(fold_dir / DONE, df)


def _check_resume(out: Path, record: dict[str, Any]) -> None:
    """A resumed cv must have been started with these settings and this data."""
    path = out / RECORD
    old = read_record(path)
    settings = ("folds", "inner_val", "manifest_hash", "ensemble_part")
    diff = first_difference(old.get("config"), record["config"]) or first_difference(
        {k: old.get(k, 0.0 if k == "ensemble_part" else None) for k in settings}, {k: record[k] for k in settings})
    if diff:
        key, was, now = diff
        raise ConfigError(f"this cv run was started with {key} = {json.dumps(was)}, not {json.dumps(now)}; "
                          "continue it with the same settings, or pass --fresh", path=path)


def _with_exams(df: pd.DataFrame, manifest) -> pd.DataFrame:  # noqa: ANN001
    """The films' ``exam_id, laterality, view`` from the manifest (folds finished before these columns
    existed lack them; the manifest is the same, as ``cv.json``'s hash checks)."""
    exams = exam_columns(manifest).set_index(manifest.df["sample_id"].to_numpy())
    df = df.drop(columns=[c for c in exams.columns if c in df.columns])
    return df.join(exams, on="sample_id")


def _level_metrics(cfg: ExperimentConfig, task, first: pd.DataFrame, classes: list[str], out: Path,  # noqa: ANN001
                   n_boot: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """``exams.level`` figures of the pooled out-of-fold films: each fold's films combined by its own
    model's aggregator, decided at its own threshold; the CIs resample women."""
    from mammolens.evaluate.levels import folded_level_predictions

    level = cfg.exams.level
    if task.unit != "film":
        raise ConfigError(f"exams.level: {level} figures combine films; task {task.name} is at {task.unit} level")
    folds = {}
    for i in sorted(first["fold"].unique()):
        bundle = json.loads((out / "repeat0" / f"fold{int(i)}" / "bundle" / "bundle.json").read_text())
        folds[int(i)] = (bundle.get("aggregator") or {"method": cfg.exams.aggregate}, float(bundle["threshold"]))
    units = folded_level_predictions(first, classes, level, folds)
    labelled = units[units["label_index"] >= 0]
    metrics = evaluate_predictions(labelled["label_index"].to_numpy(), _proba(labelled, classes),
                                   labelled["group"].astype(str).tolist(), classes, threshold=0.5, n_boot=n_boot,
                                   seed=cfg.data.split.seed, ordinal=task.ordinal)
    metrics.update(level=level, aggregate=sorted({a["method"] for a, _ in folds.values()}),
                   at_fold_thresholds=_decision_metrics(labelled, classes))
    return {level: metrics}, units


def _ensemble_aggregator(cfg: ExperimentConfig, task, table: pd.DataFrame, classes: list[str],  # noqa: ANN001
                         temperature: float) -> dict[str, Any] | None:
    """The ensemble's aggregator, from the films its operating point was fitted on (``table``: the
    reserved part's ensemble outputs, or the pooled out-of-fold films), at its temperature."""
    from mammolens.evaluate.calibration import apply_temperature
    from mammolens.evaluate.levels import choose_aggregator
    from mammolens.evaluate.thresholds import choose_threshold

    if task.unit != "film":
        return None
    scaled = table.copy()
    scaled[[f"p_{c}" for c in classes]] = apply_temperature(_proba(table, classes), temperature)
    op = cfg.operating_point
    return choose_aggregator(scaled, classes, cfg.exams.level, cfg.exams.aggregate,
                             lambda y, p: choose_threshold(y, p, op.threshold, op.beta, op.target_sensitivity))


def _proba(df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    from mammolens.evaluate.predictions import proba_of

    return proba_of(df, classes)


def _decision_metrics(df: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Sensitivity/specificity (binary) or accuracy of the ``decision`` column: each fold model's
    decision at the threshold its own inner validation part chose."""
    y = df["label_index"].to_numpy()
    pred = df["decision"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    out: dict[str, Any] = {"accuracy": float((pred == y).mean())}
    if len(classes) == 2:
        pos, neg = y == 1, y == 0
        out["sensitivity"] = float((pred[pos] == 1).mean()) if pos.any() else None
        out["specificity"] = float((pred[neg] == 0).mean()) if neg.any() else None
        out["missed_positives"] = int(((pred == 0) & pos).sum())
    return out


def _fold_row(r: int, i: int, parts: dict[str, np.ndarray], df: pd.DataFrame, classes: list[str],
              bundle: dict[str, Any]) -> dict[str, Any]:
    from mammolens.evaluate.metrics import macro_f1, roc_auc

    y, proba = df["label_index"].to_numpy(), _proba(df, classes)
    return {"repeat": r, "fold": i, "train": int(len(parts["train"])), "val": int(len(parts["val"])),
            "test": int(len(parts["test"])), "auc": roc_auc(y, proba), "macro_f1": macro_f1(y, proba),
            "threshold": bundle["threshold"], "temperature": bundle["temperature"],
            "val_auc": (bundle["metrics"].get("val") or {}).get("auc"), **_decision_metrics(df, classes)}


def _repeat_summary(everything: pd.DataFrame, classes: list[str], n_boot: int) -> dict[str, Any]:
    from mammolens.evaluate.metrics import macro_f1, roc_auc

    rows = []
    for r, df in everything.groupby("repeat"):
        y, proba = df["label_index"].to_numpy(), _proba(df, classes)
        rows.append({"repeat": int(r), "auc": roc_auc(y, proba), "macro_f1": macro_f1(y, proba), **_decision_metrics(df, classes)})
    summary: dict[str, Any] = {"per_repeat": rows}
    for key in ("auc", "macro_f1", "sensitivity", "specificity", "accuracy"):
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    return summary


def _at_table(at: dict[str, Any]) -> str:
    from mammolens.evaluate.metrics import format_value
    from mammolens.evaluate.report import html_table

    return html_table([[k, format_value(v) if not isinstance(v, int) else v] for k, v in at.items()], ["metric", "value"])


def _fold_table(rows: list[dict[str, Any]]) -> str:
    from mammolens.evaluate.metrics import format_value
    from mammolens.evaluate.report import html_table

    keys = ["repeat", "fold", "train", "val", "test", "val_auc", "auc", "macro_f1", "threshold", "temperature",
            "sensitivity", "specificity", "accuracy"]
    return html_table([[format_value(row.get(k)) if isinstance(row.get(k), float) or row.get(k) is None else row[k]
                        for k in keys] for row in rows], keys)


def render_cv(metrics: dict[str, Any]) -> str:
    """The short table ``mammolens cv`` prints."""
    from mammolens.evaluate.metrics import format_value

    lines = ["pooled out-of-fold predictions:", render_table(metrics, threshold_label="the pooled rows' threshold")]
    at = metrics["at_fold_thresholds"]
    lines.append("at each fold's validation-chosen threshold: " + "  ".join(f"{k} {format_value(v)}" for k, v in at.items()))
    for row in metrics["folds"]:
        lines.append(f"  repeat {row['repeat']} fold {row['fold']}: n {row['test']}  auc {format_value(row['auc'])}  "
                     f"threshold {format_value(row['threshold'])}")
    if "repeats" in metrics:
        rep = metrics["repeats"]
        lines.append("over repeats: " + "  ".join(
            f"{k} {format_value(v['mean'])} ± {format_value(v['sd'])}" for k, v in rep.items() if k != "per_repeat"))
    for level, m in (metrics.get("levels") or {}).items():
        lines.append(f"{level} level (pooled out-of-fold films combined by {', '.join(m['aggregate'])}):")
        lines.append(render_table(m, threshold_label="the pooled rows' threshold"))
        lines.append(f"at each fold's validation-chosen {level} threshold: "
                     + "  ".join(f"{k} {format_value(v)}" for k, v in m["at_fold_thresholds"].items()))
    lines.append(f"ensemble bundle: {metrics['ensemble']['path']}  ({metrics['seconds']} s); its operating point "
                 f"fitted on {metrics['ensemble']['operating_point_fitted_on']}")
    return "\n".join(lines)
