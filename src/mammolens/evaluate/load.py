"""``load_any_bundle``: a model bundle or an ensemble bundle, whichever the directory holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammolens.errors import ConfigError


def load_any_bundle(path: str | Path) -> Any:
    """A ``train.Bundle`` or an ``EnsembleBundle`` (members loaded recursively)."""
    from mammolens.evaluate.ensembles import is_ensemble, load_ensemble
    from mammolens.train.bundle import load_bundle

    path = Path(path)
    if not path.is_dir():
        raise ConfigError("bundle not found (expected a directory with bundle.json)", path=path)
    if is_ensemble(path):
        return load_ensemble(path, load_any_bundle)
    return load_bundle(path)
