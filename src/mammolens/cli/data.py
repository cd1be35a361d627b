"""The ``data`` verbs: inspect, split and preview a dataset before any training."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from mammolens.cli.options import KindOpt, OptionOpt, parse_options

data_app = typer.Typer(no_args_is_help=True, help="Read, inspect, split and preview datasets.")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _source_config(source: str, kind: str | None, options: list[str] | None, task: str | None = None, dedup: bool = False):
    from mammolens.engine.config import ExperimentConfig

    cfg = ExperimentConfig()
    cfg.data.source, cfg.data.kind, cfg.data.options, cfg.data.dedup = source, kind, parse_options(options), dedup
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
    from mammolens.engine.inspect import inspect_source, render_report

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
    official: bool = typer.Option(False, help="Keep the source's own training/test split (VinDr-Mammo, CBIS-DDSM); "
                                              "val comes from its training part."),
) -> None:
    """A stratified, patient-grouped split, saved to disk and checked for leakage."""
    from mammolens.data.splits import save_split
    from mammolens.engine.sources import make_or_load_split, task_samples

    cfg = _source_config(source, kind, option, task=task, dedup=dedup)
    cfg.data.split.val, cfg.data.split.test, cfg.data.split.folds, cfg.data.split.seed = val, test, folds, seed
    cfg.data.split.official = official
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
    from mammolens.engine.sources import write_preview

    cfg = _source_config(source, kind, option)
    cfg.image_size, cfg.roi_crop, cfg.workers = size, roi_crop, workers
    cfg.cache_dir = cache_dir or cfg.cache_dir
    typer.echo(f"wrote {write_preview(cfg, out, n=n, seed=seed, original=original, only_rois=only_rois)}")
