"""One factory for every model, so configs, bundles and the CLI name architectures by string.

``create_model(**model.config)`` rebuilds the exact architecture of ``model``; the config keeps
``pretrained=None`` because a rebuilt model takes its weights from a bundle, not from ImageNet.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mammolens.models.base import MammoModel
from mammolens.models.catalog import MODELS
from mammolens.models.options import require_int
from mammolens.utils.errors import ConfigError

Pretrained = str | Path | Mapping[str, str | Path | None] | None


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: Pretrained = None,
    in_chans: int = 1,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> MammoModel:
    """Build a registered model; ``pretrained`` is ``"imagenet"``, a weights file, or for a
    fusion model a mapping backbone name -> either; ``trust_pickle`` allows weight files that
    need full unpickling (only for files you trust)."""
    factory = MODELS.get(name)
    options = {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.name not in ("num_classes", "in_chans")
    }
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        known = sorted([*options, "in_chans", "pretrained", "trust_pickle"])
        raise ConfigError(f"unknown option {unknown[0]!r} for model {name!r}; known options: {', '.join(known)}")
    require_int(num_classes, "num_classes", minimum=1)
    require_int(in_chans, "in_chans", minimum=1)
    resolved = {**options, **kwargs}
    model = factory(num_classes=num_classes, in_chans=in_chans, **resolved)
    model.config = {
        "name": name,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "pretrained": None,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()},
    }
    if pretrained is not None:
        model.load_pretrained(pretrained, trust_pickle=trust_pickle)
    return model

