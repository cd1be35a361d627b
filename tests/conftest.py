import os

import pytest

# Two cores here; keep torch from oversubscribing them when several pytest workers run.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data; tests that need it skip cleanly when it is absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present")
    return path


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """Generated data and preprocessing caches go to a temporary folder, never into the checkout."""
    monkeypatch.setenv("MAMMOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "mammolens-cache"))
