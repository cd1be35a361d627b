"""The ``mammolens`` command: one sub-command per verb of the design (data, train, demo, models).

A user's mistake (a MammolensError) is printed as one line on stderr with exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import typer

from mammolens.configuration import parse_assignment
from mammolens.errors import MammolensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mammogram classification with explanations.")
data_app = typer.Typer(no_args_is_help=True, help="Read, inspect, split and preview datasets.")
app.add_typer(data_app, name="data")

KindOpt = typer.Option(None, "--kind", help="Adapter name (mias, cbis-ddsm, folders, arrays, synthetic); detected when omitted.")
OptionOpt = typer.Option(None, "--option", "-o", help="Adapter option key=value (value parsed as YAML), repeatable.")


def _options(items: list[str] | None) -> dict[str, Any]:
    return dict(parse_assignment(item, "--option") for item in items or [])


def _source_config(source: str, kind: str | None, options: list[str] | None, task: str | None = None, dedup: bool = False):
    from mammolens.experiment_config import ExperimentConfig

    cfg = ExperimentConfig()
    cfg.data.source, cfg.data.kind, cfg.data.options, cfg.data.dedup = source, kind, _options(options), dedup
    if task:
        cfg.data.task = task
    return cfg


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(..., help="Dataset folder or file, or 'synthetic'."),
    kind: Optional[str] = KindOpt,
    option: Optional[list[str]] = OptionOpt,
    dedup: bool = typer.Option(False, help="Also look for near-duplicate images (reads every image)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Counts per label, task and group; images without ROI; missing files; duplicate groups."""
    from mammolens.data.inspect import inspect_source, render_report

    cfg = _source_config(source, kind, option, dedup=dedup)
    report = inspect_source(cfg)
    typer.echo(json.dumps(report, indent=2) if as_json else render_report(report))


@data_app.command("split")
def data_split(
    source: str = typer.Argument(..., help="Dataset folder or file, or 'synthetic'."),
    out: Path = typer.Option(..., "--out", help="Where to write the split (JSON)."),
    task: str = typer.Option("benign-malignant", help="Task whose labels stratify the split."),
    kind: Optional[str] = KindOpt,
    option: Optional[list[str]] = OptionOpt,
    val: float = typer.Option(0.2, help="Validation fraction (hold-out)."),
    test: float = typer.Option(0.2, help="Test fraction (hold-out)."),
    folds: int = typer.Option(0, help="k for a k-fold split instead of hold-out."),
    seed: int = typer.Option(0),
    dedup: bool = typer.Option(False, help="Merge near-duplicate images into one group first."),
) -> None:
    """A stratified, patient-grouped split, saved to disk and checked for leakage."""
    from mammolens.data.splits import save_split
    from mammolens.datasets import make_or_load_split, task_samples

    cfg = _source_config(source, kind, option, task=task, dedup=dedup)
    cfg.data.split.val, cfg.data.split.test, cfg.data.split.folds, cfg.data.split.seed = val, test, folds, seed
    manifest, labels, task_spec = task_samples(cfg)
    split = make_or_load_split(cfg, manifest, labels, task)
    save_split(split, out)
    classes = task_spec.classes
    typer.echo(f"task {task} ({task_spec.unit} level): {len(manifest)} samples")
    for note in manifest.notes:
        typer.echo(f"note: {note}")
    for part in split.parts:
        idx = split.indices(manifest, part)
        groups = manifest.df["group"].iloc[idx].nunique()
        counts = Counter(labels[idx].tolist())
        per_class = ", ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(classes))
        typer.echo(f"{part:>6}: {len(idx):5d} samples, {groups:4d} groups ({per_class})")
    typer.echo(f"wrote {out} (no group spans two parts)")


@data_app.command("preview")
def data_preview(
    source: str = typer.Argument(..., help="Dataset folder or file, or 'synthetic'."),
    out: Path = typer.Option(..., "--out", help="PNG contact sheet to write."),
    kind: Optional[str] = KindOpt,
    option: Optional[list[str]] = OptionOpt,
    n: int = typer.Option(16, help="How many samples."),
    size: int = typer.Option(256, help="Preprocessed image size."),
    roi_crop: bool = typer.Option(False, help="Crop around the lesion annotation."),
    original: bool = typer.Option(False, help="Draw ROIs on the original images instead of preprocessed ones."),
    only_rois: bool = typer.Option(True, help="Prefer samples that carry an ROI."),
    seed: int = typer.Option(0),
    workers: Optional[int] = typer.Option(None, help="Preprocessing worker processes."),
    cache_dir: Optional[str] = typer.Option(None, help="Where preprocessed arrays are cached (default $MAMMOLENS_CACHE or .cache/mammolens)."),
) -> None:
    """One PNG: preprocessed samples, or with --original the original films, with ROI outlines."""
    from mammolens.datasets import write_preview

    cfg = _source_config(source, kind, option)
    cfg.image_size, cfg.roi_crop, cfg.workers = size, roi_crop, workers
    cfg.cache_dir = cache_dir or cfg.cache_dir
    typer.echo(f"wrote {write_preview(cfg, out, n=n, seed=seed, original=original, only_rois=only_rois)}")


@app.command("train")
def train(
    config: str = typer.Argument(..., help="Experiment YAML, or a built-in config name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override section.key=value, repeatable."),
    resume: bool = typer.Option(False, help="Resume from the run directory's last checkpoint."),
    fresh: bool = typer.Option(False, help="Replace an earlier run in the run directory."),
    devices: Optional[str] = typer.Option(None, help="Lightning devices (e.g. 2, or 'auto')."),
    strategy: Optional[str] = typer.Option(None, help="Lightning strategy (e.g. ddp)."),
    accelerator: Optional[str] = typer.Option(None, help="cpu, gpu or auto."),
    num_nodes: Optional[int] = typer.Option(None, help="Nodes for multi-node DDP."),
) -> None:
    """Train one configured model and write a bundle (weights, config, threshold, provenance)."""
    from mammolens.experiment_config import load_config

    overrides = list(set_ or [])
    for key, value in (("devices", devices), ("strategy", strategy), ("accelerator", accelerator), ("num_nodes", num_nodes)):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    from mammolens.run_dir import claim_run_dir

    cfg = load_config(config, overrides)  # config and run folder are checked before torch is imported
    out = out or Path("runs") / cfg.name
    claim_run_dir(out, resume=resume, fresh=fresh)
    from mammolens.experiment import run_experiment

    _print_summary(run_experiment(cfg, out, resume=resume, fresh=fresh))


@app.command("cv")
def cv(
    config: str = typer.Argument(..., help="Experiment YAML, or a built-in config name."),
    folds: int = typer.Option(5, "--folds", help="Patient-grouped stratified folds."),
    repeats: int = typer.Option(1, "--repeats", help="Repeat with split seeds seed, seed+1, ... (mean ± sd)."),
    out: Optional[Path] = typer.Option(None, "--out", help="cv run directory (default runs/cv-<name>)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override section.key=value, repeatable."),
    inner_val: float = typer.Option(0.2, "--inner-val", help="Fraction of each training fold held out (by patient) for early stopping, temperature and threshold."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Patient-bootstrap resamples for the CIs."),
    fresh: bool = typer.Option(False, help="Discard an earlier cv run in --out instead of continuing it."),
    ensemble_part: float = typer.Option(0.0, "--ensemble-part", help="Share of the women set aside before the folds: the ensemble's temperature and threshold are fitted on its own output there (0: on the single fold models' pooled out-of-fold output, an approximation)."),
) -> None:
    """Patient-grouped k-fold cross-validation: pooled out-of-fold metrics with patient CIs, fold bundles,
    an ensemble bundle and report.html. Re-running the same command continues an interrupted run."""
    from mammolens.experiment_config import load_config

    cfg = load_config(config, list(set_ or []))
    from mammolens.crossval import render_cv, run_cv

    command = "mammolens " + " ".join(sys.argv[1:]) if sys.argv and "cv" in sys.argv else None
    metrics = run_cv(cfg, out or Path("runs") / f"cv-{cfg.name}", folds=folds, repeats=repeats, inner_val=inner_val,
                     fresh=fresh, n_boot=n_boot, command=command, ensemble_part=ensemble_part)
    typer.echo(render_cv(metrics))


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override section.key=value, repeatable."),
) -> None:
    """The main job on built-in synthetic mammograms: split, preprocess, train the hybrid, evaluate, bundle."""
    from mammolens.experiment_config import load_config

    cfg = load_config("demo", list(set_ or []))
    from mammolens.experiment import run_experiment

    summary = run_experiment(cfg, out, fresh=True)
    _print_summary(summary)


@app.command("models")
def models() -> None:
    """List the registered model names."""
    from mammolens.models import list_models

    for name in list_models():
        typer.echo(name)


def _print_summary(summary: dict[str, Any]) -> None:
    typer.echo(f"{summary['name']}: {summary['model']} on {summary['task']} ({summary['unit']} level) {summary['classes']}")
    typer.echo(f"  samples {summary['samples']}  groups {summary['groups']}  best epoch {summary['best_epoch']}"
               f"{'  (stopped early)' if summary['stopped_early'] else ''}  {summary['seconds']} s")
    for part, m in summary["metrics"].items():
        typer.echo("  " + part + ": " + "  ".join(f"{k} {_number(v)}" for k, v in m.items()))
    for note in summary["notes"]:
        typer.echo(f"  note: {note}")
    typer.echo(f"  bundle: {summary['bundle']}")


def _number(value: Any) -> str:
    if value is None:
        return "undefined"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


from mammolens.deploy.cli import register as _register_deploy  # noqa: E402
from mammolens.evaluate.cli import register as _register_evaluate  # noqa: E402
from mammolens.explain.cli import register as _register_explain  # noqa: E402

_register_evaluate(app)
_register_explain(app)
_register_deploy(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for a user's mistake, printed as one line)."""
    try:
        app(args=argv)  # Typer prints usage errors itself and exits 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MammolensError as exc:
        typer.echo(f"mammolens: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("mammolens: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
