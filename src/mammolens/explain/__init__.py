"""Explanations a clinician can check: CAM heatmaps on the original film, and how often they land on the lesion.

``explain_image(bundle, image)`` -> ``Explanation`` (heatmap at the original image's size, per-backbone
maps for a hybrid); ``overlay_png`` / ``panel_png`` draw it; ``CAM_METHODS`` lists the methods.
The names load on first use, so ``mammolens.cli.explain`` (and ``mammolens --help``) never pull in
torch or pytorch-grad-cam.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CAM_METHODS": "mammolens.explain.methods",
    "Explanation": "mammolens.explain.api",
    "explain_image": "mammolens.explain.api",
    "explain_preprocessed": "mammolens.explain.api",
    "overlay_png": "mammolens.explain.overlay",
    "panel_png": "mammolens.explain.overlay",
}

__all__ = ["CAM_METHODS", "Explanation", "explain_image", "explain_preprocessed", "overlay_png", "panel_png"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mammolens.explain' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
