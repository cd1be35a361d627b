import os

import pytest

# Two cores here; keep torch from oversubscribing them when several pytest workers run.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from realdata import shared_folder


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data; tests that need it skip when it is absent (and fail in CI)."""
    return shared_folder()


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """Generated data and preprocessing caches go to a temporary folder, never into the checkout."""
    monkeypatch.setenv("MAMMOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "mammolens-cache"))
