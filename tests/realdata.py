"""Real data for the tests that need it: ../shared/data and the data packages.

Outside CI such a test skips, naming what is absent; in CI (CI=true) it fails instead, so a
broken install step or a missing data folder cannot hide behind a green run.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def absent(what: str) -> None:
    """Real data or a package is missing: a failure in CI, a skip on a developer's machine only."""
    if not IN_CI:
        pytest.skip(f"{what} is absent")
    pytest.fail(f"{what} is absent, and CI=true requires the real-data tests to run", pytrace=False)


def shared_folder(*parts: str) -> str:
    """Path of ../shared/data/<parts>, or skip (fail in CI) when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        absent(f"../shared/data/{'/'.join(parts)}" if parts else "../shared/data")
    return path


def import_or_absent(name: str) -> ModuleType:
    """A data or weights package (installed by `make`), or skip (fail in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        absent(f"package {name}")
        raise  # not reached: absent() skips or fails
