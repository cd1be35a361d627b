"""Training: config, data module, losses, transfer modes and the Lightning loop.

Names are imported on first use, so reading a config does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AugmentConfig": "config",
    "TrainConfig": "config",
    "ArrayDataModule": "datamodule",
    "IMAGENET_GRAY": "normalisation",
    "num_outputs": "losses",
    "probabilities": "losses",
    "LOSSES": "registries",
    "OPTIMIZERS": "registries",
    "SCHEDULERS": "registries",
    "ClassifierModule": "module",
    "fit": "fitting",
    "FitResult": "fitting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
