"""The ``train``, ``cv``, ``demo`` and ``models`` verbs (heavy imports inside the commands: ``--help`` is fast)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from mammolens.cli.options import (
    AcceleratorOpt,
    DevicesOpt,
    FreshOpt,
    NodesOpt,
    ResumeOpt,
    SetOpt,
    StrategyOpt,
    trainer_overrides,
)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("cv")(cv)
    app.command("demo")(demo)
    app.command("models")(models)


def train(
    config: str = typer.Argument(..., help="Experiment YAML, or a built-in config name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
    set_: Optional[list[str]] = SetOpt,
    resume: bool = ResumeOpt,
    fresh: bool = FreshOpt,
    devices: Optional[str] = DevicesOpt,
    strategy: Optional[str] = StrategyOpt,
    accelerator: Optional[str] = AcceleratorOpt,
    num_nodes: Optional[int] = NodesOpt,
) -> None:
    """Train one configured model and write a bundle (weights, config, threshold, provenance)."""
    from mammolens.engine.config import load_config
    from mammolens.engine.run_dir import claim_run_dir

    cfg = load_config(config, [*(set_ or []), *trainer_overrides(devices, strategy, accelerator, num_nodes)])
    out = out or Path("runs") / cfg.name
    claim_run_dir(out, resume=resume, fresh=fresh)  # config and run folder are checked before torch is imported
    from mammolens.engine.experiment import run_experiment

    _print_summary(run_experiment(cfg, out, resume=resume, fresh=fresh))


def cv(
    config: str = typer.Argument(..., help="Experiment YAML, or a built-in config name."),
    folds: int = typer.Option(5, "--folds", help="Patient-grouped stratified folds."),
    repeats: int = typer.Option(1, "--repeats", help="Repeat with split seeds seed, seed+1, ... (mean ± sd)."),
    out: Optional[Path] = typer.Option(None, "--out", help="cv run directory (default runs/cv-<name>)."),
    set_: Optional[list[str]] = SetOpt,
    inner_val: float = typer.Option(0.2, "--inner-val", help="Fraction of each training fold held out (by patient) for early stopping, temperature and threshold."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Patient-bootstrap resamples for the CIs."),
    resume: bool = ResumeOpt,
    fresh: bool = FreshOpt,
    devices: Optional[str] = DevicesOpt,
    strategy: Optional[str] = StrategyOpt,
    accelerator: Optional[str] = AcceleratorOpt,
    num_nodes: Optional[int] = NodesOpt,
    ensemble_part: float = typer.Option(0.0, "--ensemble-part", help="Share of the women set aside before the folds: the ensemble's temperature and threshold are fitted on its own output there (0: on the single fold models' pooled out-of-fold output, an approximation)."),
) -> None:
    """Patient-grouped k-fold cross-validation: pooled out-of-fold metrics with patient CIs, fold bundles,
    an ensemble bundle and report.html. --resume continues an interrupted run (finished folds are kept)."""
    from mammolens.engine.config import load_config

    cfg = load_config(config, [*(set_ or []), *trainer_overrides(devices, strategy, accelerator, num_nodes)])
    from mammolens.engine.crossval import render_cv, run_cv

    command = "mammolens " + " ".join(sys.argv[1:]) if sys.argv and "cv" in sys.argv else None
    metrics = run_cv(cfg, out or Path("runs") / f"cv-{cfg.name}", folds=folds, repeats=repeats, inner_val=inner_val,
                     resume=resume, fresh=fresh, n_boot=n_boot, command=command, ensemble_part=ensemble_part)
    typer.echo(render_cv(metrics))


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory."),
    set_: Optional[list[str]] = SetOpt,
    resume: bool = ResumeOpt,
    fresh: bool = FreshOpt,
) -> None:
    """The main job on built-in synthetic mammograms: split, preprocess, train the hybrid, evaluate, bundle."""
    from mammolens.engine.config import load_config
    from mammolens.engine.run_dir import claim_run_dir

    cfg = load_config("demo", list(set_ or []))
    claim_run_dir(out, resume=resume, fresh=fresh)
    from mammolens.engine.experiment import run_experiment

    _print_summary(run_experiment(cfg, out, resume=resume, fresh=fresh))


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
