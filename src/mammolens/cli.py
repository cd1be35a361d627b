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
import yaml

from mammolens.errors import ConfigError, MammolensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mammogram classification with explanations.")
data_app = typer.Typer(no_args_is_help=True, help="Read, inspect, split and preview datasets.")
app.add_typer(data_app, name="data")

KindOpt = typer.Option(None, "--kind", help="Adapter name (mias, cbis-ddsm, folders, arrays, synthetic); detected when omitted.")
OptionOpt = typer.Option(None, "--option", "-o", help="Adapter option key=value (value parsed as YAML), repeatable.")


def _options(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r} must look like key=value")
        out[key] = yaml.safe_load(raw)
    return out


def _source_config(source: str, kind: str | None, options: list[str] | None, task: str | None = None, dedup: bool = False):
    from mammolens.experiment import ExperimentConfig

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
    from mammolens.data.tasks import TASKS, derive_task
    from mammolens.experiment import load_experiment_source, make_or_load_split

    cfg = _source_config(source, kind, option, task=task, dedup=dedup)
    cfg.data.split.val, cfg.data.split.test, cfg.data.split.folds, cfg.data.split.seed = val, test, folds, seed
    manifest, _ = load_experiment_source(cfg)
    manifest, labels = derive_task(manifest, task)
    split = make_or_load_split(cfg, manifest, labels, task)
    save_split(split, out)
    classes = TASKS.get(task).classes
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
    """A PNG contact sheet of preprocessed samples with ROI outlines."""
    from mammolens.experiment import write_preview

    cfg = _source_config(source, kind, option)
    cfg.image_size, cfg.roi_crop, cfg.workers = size, roi_crop, workers
    cfg.cache_dir = cache_dir or cfg.cache_dir
    for path in write_preview(cfg, out, n=n, seed=seed, original=original, only_rois=only_rois):
        typer.echo(f"wrote {path}")


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
    from mammolens.experiment import load_config, run_experiment

    overrides = list(set_ or [])
    for key, value in (("devices", devices), ("strategy", strategy), ("accelerator", accelerator), ("num_nodes", num_nodes)):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    cfg = load_config(config, overrides)
    summary = run_experiment(cfg, out or Path("runs") / cfg.name, resume=resume, fresh=fresh)
    _print_summary(summary)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override section.key=value, repeatable."),
) -> None:
    """The main job on built-in synthetic mammograms: split, preprocess, train the hybrid, evaluate, bundle."""
    from mammolens.experiment import load_config, run_experiment

    cfg = load_config("demo", list(set_ or []))
    summary = run_experiment(cfg, out, fresh=True)
    _print_summary(summary)


@app.command("models")
def models() -> None:
    """List the registered model names."""
    from mammolens.models import list_models

    for name in list_models():
        typer.echo(name)


def _print_summary(summary: dict[str, Any]) -> None:
    typer.echo(f"{summary['name']}: {summary['model']} on {summary['task']} {summary['classes']}")
    typer.echo(f"  samples {summary['samples']}  groups {summary['groups']}  best epoch {summary['best_epoch']}"
               f"{'  (stopped early)' if summary['stopped_early'] else ''}  {summary['seconds']} s")
    for part, m in summary["metrics"].items():
        typer.echo("  " + part + ": " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
    typer.echo(f"  bundle: {summary['bundle']}")


from mammolens.deploy.cli import register as _register_deploy  # noqa: E402
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
