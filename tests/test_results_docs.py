"""RESULTS.md and docs/results/ cite commands and link pages: both must still exist.

A renamed option or a moved page otherwise leaves the results page pointing at nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer

from mammolens.cli import app

ROOT = Path(__file__).resolve().parents[1]
RESULT_PAGES = [ROOT / "RESULTS.md", *sorted((ROOT / "docs" / "results").glob("*.md"))]
LINKED_PAGES = [ROOT / "README.md", *RESULT_PAGES]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def _commands(text: str) -> list[str]:
    """Shell lines cited in a page: fenced blocks line by line, inline code with its wraps joined."""
    fenced = [line for block in FENCE.findall(text) for line in block.splitlines()]
    inline = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", FENCE.sub("", text))]
    return [part for line in fenced + inline for part in re.split(r"&&|;|\|", line)]


def _cli_options() -> dict[str, set[str]]:
    """Each verb ('cv', 'data inspect', ...) and the option names it accepts."""
    def walk(command: click.Command, prefix: str, out: dict[str, set[str]]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            verb = f"{prefix} {name}".strip()
            out[verb] = {opt for param in sub.params for opt in (*param.opts, *param.secondary_opts)}
            walk(sub, verb, out)
    verbs: dict[str, set[str]] = {}
    walk(typer.main.get_command(app), "", verbs)
    return verbs


@pytest.mark.parametrize("page", RESULT_PAGES, ids=lambda p: p.name)
def test_cited_mammolens_commands_exist(page: Path) -> None:
    verbs = _cli_options()
    for command in _commands(page.read_text()):
        words = command.split()
        if "mammolens" not in words or command.lstrip().startswith("#"):
            continue
        rest = words[words.index("mammolens") + 1:]
        if not rest or not re.fullmatch(r"[a-z][a-z-]*", rest[0]):
            continue  # prose ("`mammolens` is the CLI"), not a command
        grouped = rest[0] == "data" and len(rest) > 1 and not rest[1].startswith("-")
        verb = " ".join(rest[:2]) if grouped else rest[0]
        assert verb in verbs, f"{page.name}: `mammolens {verb}` is no verb (in: {command.strip()})"
        for word in rest:
            option = word.strip("[]`,.()").split("=")[0]
            if option.startswith("-") and not re.fullmatch(r"-+\d*", option):
                assert option in verbs[verb], f"{page.name}: `mammolens {verb}` has no {option}"


@pytest.mark.parametrize("page", RESULT_PAGES, ids=lambda p: p.name)
def test_cited_benchmarks_and_configs_exist(page: Path) -> None:
    text = page.read_text()
    for command in _commands(text):
        match = re.search(r"(?:^|[\s/])([a-z_]+\.py)\b", command)
        script = ROOT / "benchmarks" / match.group(1) if match else None
        if script is None or not script.exists():
            continue
        defined = set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", script.read_text()))
        for word in command[match.end():].split():
            option = word.strip("[]`,.()")
            if option.startswith("--"):
                assert option in defined, f"{page.name}: benchmarks/{script.name} has no {option}"
    for path in re.findall(r"\b((?:configs|benchmarks|tests)/[\w./-]+\.(?:yaml|py))", text):
        assert (ROOT / path).exists(), f"{page.name}: {path} does not exist"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:|#", target):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: broken link {target}"
