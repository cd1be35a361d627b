"""``mammolens pacs CONFIG``: the DICOM node (docs/pacs.md). Nothing heavy imported at module level."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("pacs")(pacs)
    app.command("pacs-view")(pacs_view)


def pacs(
    config: Path = typer.Argument(..., help="The node's YAML config (PACS URL, credentials, bundles, aggregation, state file)."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Exit once the change feed is read and no study is queued."),
    log_file: Path | None = typer.Option(None, "--log-file", help="Also append the log here (no patient identifiers, hashed UIDs)."),
    verbose: bool = typer.Option(False, "--verbose", help="Debug lines too."),
) -> None:
    """Watch a PACS for stable mammography studies and write SR, parametric-map and overlay results back into them."""
    from mammolens.pacs.command import run_node

    code = run_node(config, until_idle=until_idle, log_file=log_file, verbose=verbose)
    if code:
        raise typer.Exit(code)


def pacs_view(
    config: Path = typer.Argument(..., help="The node's YAML config (only its pacs: section is used)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8050, "--port", help="Port to listen on."),
) -> None:
    """Serve the study viewer: a study from the PACS by StudyInstanceUID, its views, heatmaps and exam result."""
    import uvicorn

    from mammolens.pacs.config import load_config
    from mammolens.pacs.viewer import create_viewer

    uvicorn.run(create_viewer(load_config(config)), host=host, port=port, log_level="warning")
