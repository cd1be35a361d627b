"""``mammolens pacs CONFIG``: the DICOM node (docs/pacs.md). Nothing heavy imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("pacs")(pacs)


def pacs(
    config: Path = typer.Argument(..., help="The node's YAML config (PACS URL, credentials, bundles, aggregation, state file)."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Exit once the change feed is read and no study is queued."),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Also append the log here (no patient identifiers, hashed UIDs)."),
    verbose: bool = typer.Option(False, "--verbose", help="Debug lines too."),
) -> None:
    """Watch a PACS for stable mammography studies and write SR, parametric-map and overlay results back into them."""
    from mammolens.pacs.command import run_node

    code = run_node(config, until_idle=until_idle, log_file=log_file, verbose=verbose)
    if code:
        raise typer.Exit(code)
