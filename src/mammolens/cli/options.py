"""Options every verb spells the same way (the grammar table in docs/cli.md)."""

from __future__ import annotations

from typing import Any

import typer

from mammolens.utils.configuration import parse_assignment
from mammolens.utils.errors import ConfigError

KindOpt = typer.Option(None, "--kind", help="Adapter name (mias, cbis-ddsm, folders, arrays, synthetic, ...); detected when omitted.")
OptionOpt = typer.Option(None, "--option", "-o", help="Adapter option key=value (value parsed as YAML), repeatable.")
SetOpt = typer.Option(None, "--set", help="Config override section.key=value (value parsed as YAML), repeatable.")
FreshOpt = typer.Option(False, "--fresh", help="Replace this verb's earlier output in --out (only the files it wrote are removed).")
ResumeOpt = typer.Option(False, "--resume", help="Continue this verb's interrupted output in --out (same data and settings).")
DevicesOpt = typer.Option(None, "--devices", help="Lightning devices (e.g. 2, or 'auto').")
StrategyOpt = typer.Option(None, "--strategy", help="Lightning strategy (e.g. ddp).")
AcceleratorOpt = typer.Option(None, "--accelerator", help="cpu, gpu or auto.")
NodesOpt = typer.Option(None, "--num-nodes", help="Nodes for multi-node DDP.")
ThresholdOpt = typer.Option("bundle", "--threshold",
                            help="Decision threshold: 'bundle' (chosen on validation data when it was trained) or a number in [0, 1].")


def parse_options(items: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """``key=value`` items (values parsed as YAML) -> a dict; one line naming the item on a mistake."""
    return dict(parse_assignment(item, flag) for item in items or [])


def parse_threshold(text: str) -> float | None:
    """``--threshold``: None for the bundle's own, else the number given."""
    if text == "bundle":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--threshold {text!r} must be 'bundle' or a number in [0, 1]")
    return value


def trainer_overrides(devices: str | None, strategy: str | None, accelerator: str | None,
                      num_nodes: int | None) -> list[str]:
    """The Lightning options of ``train`` and ``cv`` as config overrides."""
    pairs = (("devices", devices), ("strategy", strategy), ("accelerator", accelerator), ("num_nodes", num_nodes))
    return [f"train.{key}={value}" for key, value in pairs if value is not None]
