"""The ``evaluate`` and ``ensemble`` verbs (heavy imports stay inside the commands: ``--help`` is fast)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from mammolens.cli.options import FreshOpt, KindOpt, OptionOpt, ThresholdOpt, parse_options, parse_threshold
from mammolens.engine.run_dir import claim_output, open_output, training_history
from mammolens.utils.errors import ConfigError, DataError


def bundle_label(bundle_path: Path) -> str:
    """A default output name of its own for every bundle: its run folder's name and a hash of its bundle.json
    (``runs/a/bundle`` and ``runs/b/bundle`` never share ``runs/evaluate/bundle-...``)."""
    import hashlib

    path = Path(bundle_path).resolve()
    try:
        digest = hashlib.sha256((path / "bundle.json").read_bytes()).hexdigest()[:8]
    except OSError:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = path.parent.name if path.name in ("bundle", "ensemble") else path.name
    return f"{name}-{digest}"


def _command(verb: str, arguments: list[Any], options: dict[str, Any]) -> str:
    """The command line that reproduces this run (rebuilt from the parsed values, defaults included)."""
    parts = ["mammolens", verb, *(shlex.quote(str(a)) for a in arguments)]
    for name, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                parts += [f"--{name}", shlex.quote(str(item))]
    return " ".join(parts)


def label_source(manifest: Any, task_name: str) -> tuple[Any, Any]:
    """Every sample the task labels. Unlike training, one class alone is allowed (its AUC is undefined)."""
    import numpy as np

    from mammolens.data.tasks import TASKS, derive_task, task_units

    try:
        return derive_task(manifest, task_name, allow_missing_classes=True)
    except DataError:
        task = TASKS.get(task_name)
        manifest = task_units(manifest, task_name).manifest  # still one sample per located finding
        labels = np.array([task.label_of(r) for r in manifest.df.to_dict("records")], dtype=object)
        keep = np.array([v is not None for v in labels])
        if not keep.any():
            raise  # no labelled sample at all: derive_task's line says which column held what
        return manifest.subset(keep), labels[keep].astype(np.int64)


def _check_task(bundle: Any, task_name: str) -> None:
    from mammolens.data.tasks import TASKS

    classes = list(TASKS.get(task_name).classes)
    if list(bundle.classes) != classes:
        raise ConfigError(f"the bundle's classes {list(bundle.classes)} do not match task {task_name!r}'s "
                          f"labels {classes}", path=bundle.path)


def evaluate_bundle(
    bundle_path: Path, source: str, *, task: str | None = None, kind: str | None = None,
    options: dict[str, Any] | None = None, cache_dir: str | Path, workers: int | None = None,
    threshold: float | None = None, n_boot: int = 2000, seed: int = 0, progress: bool = True, command: str = "",
    strict: bool = False, level: str = "film", aggregate: str | None = None, split: str | Path | None = None,
    part: str = "test",
) -> tuple[dict[str, Any], Any, str, Any]:
    """(metrics, predictions table, report HTML, the ``level`` table or None) of a bundle on every
    labelled sample of ``source``, or only on part ``part`` of the saved ``split`` (made for this source
    and task, e.g. held-out women); ``metrics["warnings"]`` says when those samples or women are the
    bundle's own training data (``strict``: refused instead); at breast or exam level
    ``metrics["levels"]`` holds that level's figures, the films combined by the bundle's aggregator
    (``aggregate`` overrides its method)."""
    from mammolens.bundle import load_bundle
    from mammolens.data.adapters.base import load_source
    from mammolens.evaluate.overlap import refuse_if_strict, training_overlap
    from mammolens.evaluate.predict import bundle_cache, predict_manifest
    from mammolens.evaluate.predictions import predictions_frame
    from mammolens.evaluate.report import render_report
    from mammolens.evaluate.levels import check_level, exam_columns, level_tables
    from mammolens.evaluate.summary import evaluate_predictions

    check_level(level)
    bundle = load_bundle(bundle_path)
    task = task or bundle.task
    _check_task(bundle, task)
    stored = getattr(bundle, "aggregator", None) or {"method": "max"}
    if level != "film" and aggregate == "fitted" and stored["method"] != "fitted":
        raise ConfigError("--aggregate fitted: the bundle has no fitted aggregator (train with exams.aggregate: "
                          "fitted)", path=bundle_path)
    manifest = load_source(source, kind, **(options or {})).manifest
    manifest, y = label_source(manifest, task)
    if split is not None:
        from mammolens.data.splits import load_split

        rows = load_split(split, manifest).indices(manifest, part)
        manifest, y = manifest.subset(rows.tolist()), y[rows]
    groups = manifest.df["group"].astype(str).tolist()
    sample_ids = manifest.df["sample_id"].astype(str).tolist()
    warnings = training_overlap(bundle, sample_ids, groups)
    refuse_if_strict(warnings, strict)  # before any scoring
    proba = predict_manifest(bundle, manifest, cache_dir, workers=workers, progress=progress)
    fixed, threshold = threshold, bundle.threshold if threshold is None else threshold
    from mammolens.data.tasks import TASKS

    metrics = evaluate_predictions(y, proba, groups, bundle.classes, threshold, n_boot=n_boot, seed=seed,
                                   ordinal=TASKS.get(task).ordinal)
    metrics.update(task=task, bundle=str(Path(bundle_path).resolve()), source=str(source),
                   threshold_from="bundle" if fixed is None else f"fixed {fixed:g}", warnings=warnings,
                   split=None if split is None else {"file": str(split), "part": part})
    table = predictions_frame(sample_ids, groups, y, proba, bundle.classes, threshold, exams=exam_columns(manifest))
    units = None
    if level != "film":
        metrics["levels"], units = _level_figures(bundle, task, table, level, aggregate, fixed, n_boot, seed)
    cache = bundle_cache(bundle, cache_dir)
    name = "/".join(Path(bundle_path).resolve().parts[-2:])
    html = render_report(
        metrics, table, title=f"{name} on {Path(str(source)).name}", history=training_history(bundle_path),
        subtitle=f"task {task}; " + (f"part {part!r} of split {split} scored" if split is not None else
                                      f"every labelled sample of {source} scored (no split)") + "; threshold "
                 f"{threshold:.3f} ({metrics['threshold_from']})",
        thumbnails=lambda sid: (cache.load(sid), cache.load_rois(sid)), command=command or None,
        config=getattr(bundle, "config", None) or None,
        provenance={"bundle": metrics["bundle"], "bundle_provenance": {
            k: v for k, v in getattr(bundle, "provenance", {}).items() if k not in ("fitted_on", "held_out")}},
        warnings=warnings, extra_tables=level_tables(metrics.get("levels")),
    )
    return metrics, table, html, units


def _level_figures(bundle: Any, task: str, table: Any, level: str, aggregate: str | None, fixed: float | None,
                   n_boot: int, seed: int) -> tuple[dict[str, Any], Any]:
    """Breast or exam figures: the bundle's aggregator (method, fitted parameters, threshold chosen on
    its validation part); ``aggregate`` names another method, which then decides at the film threshold;
    ``fixed``: a threshold given on the command line instead."""
    from mammolens.data.tasks import TASKS
    from mammolens.evaluate.levels import level_metrics, unit_threshold

    if TASKS.get(task).unit != "film":
        raise ConfigError(f"--level {level}: breast and exam figures combine films; task {task} is at "
                          f"{TASKS.get(task).unit} level")
    stored = getattr(bundle, "aggregator", None) or {"method": "max"}
    own = aggregate in (None, stored["method"])
    method = stored["method"] if own else aggregate
    threshold = fixed if fixed is not None else unit_threshold(stored if own else None, bundle.threshold)
    metrics, units = level_metrics(table, bundle.classes, level, method=method,
                                   params=stored.get("params") if own else None, threshold=threshold,
                                   n_boot=n_boot, seed=seed, ordinal=TASKS.get(task).ordinal)
    metrics["threshold_from"] = f"fixed {fixed:g}" if fixed is not None else (
        f"the bundle's {stored.get('level')} threshold" if own and stored.get("threshold") is not None else "the film threshold")
    return {level: metrics}, units


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        bundle: Path = typer.Argument(..., help="Bundle (or ensemble bundle) directory."),
        source: str = typer.Argument(..., help="Dataset folder or file any adapter reads."),
        task: Optional[str] = typer.Option(None, "--task", help="Task whose labels are scored (default: the bundle's)."),
        kind: Optional[str] = KindOpt,
        option: Optional[list[str]] = OptionOpt,
        out: Optional[Path] = typer.Option(
            None, "--out", help="Output folder (default runs/evaluate/<run>-<bundle hash>-<source>, one per bundle)."),
        threshold: str = ThresholdOpt,
        fresh: bool = FreshOpt,
        n_boot: int = typer.Option(2000, "--n-boot", help="Patient-bootstrap resamples."),
        seed: int = typer.Option(0, help="Bootstrap seed."),
        split: Optional[Path] = typer.Option(
            None, "--split", help="Score only one part of this saved split (made by `data split` for SOURCE and the task)."),
        part: str = typer.Option("test", "--part", help="The split part scored with --split."),
        workers: Optional[int] = typer.Option(None, help="Preprocessing worker processes."),
        cache_dir: Optional[str] = typer.Option(None, help="Preprocessing cache (default $MAMMOLENS_CACHE or .cache/mammolens)."),
        strict: bool = typer.Option(False, "--strict", help="Refuse SOURCE when it holds samples or women the bundle was trained or validated on (default: warn)."),
        level: str = typer.Option("film", "--level", help="Also score breasts or exams: film, breast or exam."),
        aggregate: Optional[str] = typer.Option(None, "--aggregate", help="How films combine at --level: max, mean or fitted (default: the bundle's)."),
    ) -> None:
        """Score every sample of SOURCE with BUNDLE: metrics.json, predictions.csv, report.html."""
        import os

        from mammolens.evaluate.predictions import write_predictions
        from mammolens.evaluate.summary import render_table
        from mammolens.utils.atomic import write_json, write_text

        if n_boot < 0:
            raise ConfigError(f"--n-boot must be >= 0, got {n_boot}")
        cache = cache_dir or os.environ.get("MAMMOLENS_CACHE", ".cache/mammolens")
        out_dir = out or Path("runs") / "evaluate" / f"{bundle_label(bundle)}-{Path(source).stem}"
        claim_output(out_dir, "evaluate", fresh=fresh)
        fixed = parse_threshold(threshold)
        command = _command("evaluate", [bundle, source], {
            "task": task, "kind": kind, "option": option, "out": out_dir, "threshold": threshold, "n-boot": n_boot,
            "seed": seed, "workers": workers, "cache-dir": cache, "level": level, "aggregate": aggregate, "split": split,
            "part": part if split else None})
        if aggregate is not None:
            from mammolens.evaluate.exams import AGGREGATORS

            AGGREGATORS.get(aggregate)  # one line listing the known names, before any scoring
        metrics, table, html, units = evaluate_bundle(
            bundle, source, task=task, kind=kind, options=parse_options(option), cache_dir=cache, workers=workers,
            threshold=fixed, n_boot=n_boot, seed=seed, command=command, strict=strict, level=level,
            aggregate=aggregate, split=split, part=part,
        )
        for line in metrics["warnings"]:
            typer.echo(f"mammolens: WARNING: {line}", err=True)
        # Everything is computed before anything is written: a failure leaves --out untouched.
        open_output(out_dir, "evaluate", fresh=fresh)
        write_predictions(out_dir / "predictions.csv", table)
        if units is not None:
            write_predictions(out_dir / f"predictions-{level}.csv", units)
        write_json(out_dir / "metrics.json", metrics)
        write_text(out_dir / "report.html", html)
        typer.echo(render_table(metrics))
        for name, figures in (metrics.get("levels") or {}).items():
            typer.echo(f"{name} level ({figures['aggregate']}; {figures['n_films']} films):")
            typer.echo(render_table(figures, threshold_label=figures["threshold_from"]))
        typer.echo(f"wrote {out_dir}/metrics.json, predictions.csv, report.html")

    @app.command("ensemble")
    def ensemble(
        runs: list[Path] = typer.Argument(..., help="cv run directories (each with predictions.csv and ensemble/)."),
        stack: str = typer.Option("logreg", "--stack", help="mean, logreg, linear-svc or svc."),
        out: Path = typer.Option(..., "--out", help="Ensemble bundle directory to write."),
        beta: float = typer.Option(2.0, help="F-beta the threshold maximises."),
        target_sensitivity: Optional[float] = typer.Option(
            None, help="Instead: the threshold reaching this sensitivity at the best specificity."),
        seed: int = typer.Option(0),
        n_boot: int = typer.Option(2000, "--n-boot"),
    ) -> None:
        """Combine cv runs into one ensemble bundle, fitted on their out-of-fold predictions only."""
        from mammolens.engine.stacking import build_ensemble
        from mammolens.evaluate.ensembles import STACKERS
        from mammolens.evaluate.summary import render_table

        if stack != "mean":
            STACKERS.get(stack)  # one line listing the known names
        path, metrics = build_ensemble(out, runs, stack, seed=seed, beta=beta,
                                       target_sensitivity=target_sensitivity, n_boot=n_boot)
        typer.echo(f"{stack} ensemble of {len(runs)} run(s); held-out ({'nested cv' if stack != 'mean' else 'out-of-fold'}) "
                   "predictions (threshold-dependent figures are optimistic: the threshold was chosen on them):")
        typer.echo(render_table(metrics))
        typer.echo(f"wrote {path}")
