"""The ``mammolens`` command, one module per verb group (data, train, evaluate, explain, deploy, pacs).

A user's mistake (a MammolensError) is printed as one line on stderr with exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from mammolens.cli import data, deploy, evaluate, explain, pacs, train
from mammolens.utils.errors import MammolensError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mammogram classification with explanations.")
for _group in (data, train, evaluate, explain, deploy, pacs):
    _group.register(app)


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
