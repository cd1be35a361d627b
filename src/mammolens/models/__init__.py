"""The model zoo: ``create_model(name, num_classes, pretrained=..., **options)``.

Names are listed by ``list_models()`` without importing torch (``catalog.py``); a model's module
(the timm single backbones under their timm names, ``hybrid`` / ``hybrid-lite``, ``scratch-cnn``,
``attention``) is imported when that model is first built.
"""

from __future__ import annotations

from typing import Any

from mammolens.models.catalog import BACKBONES, MODELS, list_models

__all__ = ["BACKBONES", "MODELS", "MammoModel", "create_model", "list_models"]


def create_model(name: str, num_classes: int, **kwargs: Any) -> Any:
    """Build a registered model (see ``mammolens.models.registry.create_model``)."""
    from mammolens.models.registry import create_model as _create

    return _create(name, num_classes, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "MammoModel":
        from mammolens.models.base import MammoModel

        return MammoModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
