"""Where a result came from: the mammolens checkout's git state and package versions.

Bundles record it and reports print it; one implementation, so both say the same thing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

_CHECKOUT = Path(__file__).resolve().parent


def package_versions(names: Iterable[str], missing: str = "") -> dict[str, str]:
    """Installed version of each package, ``missing`` for one that is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = missing
    return versions


def git_state() -> tuple[str, bool]:
    """The mammolens source checkout's commit and whether it has uncommitted changes ('' outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_CHECKOUT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=_CHECKOUT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "", False
    return commit, bool(status.strip())


def file_hash(path: Path) -> str:
    """A file's content, in 16 hex digits (run records and bundle provenance)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def json_hash(value: Any) -> str:
    """A JSON-able value's content, key order aside, in 16 hex digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
