"""Adapter registry: a source on disk (MIAS, CBIS-DDSM, class folders, arrays, synthetic) -> Manifest.

Each adapter module registers an ``Adapter`` under its name. ``load_source`` picks one by name or by
asking each adapter whether it recognises the path, so ``mammolens data inspect PATH`` needs no flags.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammolens.data.manifest import Manifest
from mammolens.errors import DataError
from mammolens.registry import Registry


@dataclass
class SourceResult:
    """What an adapter read: the manifest plus what ``data inspect`` should tell the user."""

    manifest: Manifest
    notes: list[str] = field(default_factory=list)  # human lines, e.g. rows without coordinates
    missing_files: list[str] = field(default_factory=list)  # only when require_images=False


@dataclass(frozen=True)
class Adapter:
    detect: Callable[[Path], bool]
    # load(path, *, require_images: bool, **options) -> SourceResult. With require_images=True a
    # missing image is a DataError naming the file; with False it is listed in missing_files.
    load: Callable[..., SourceResult]
    description: str = ""


ADAPTERS: Registry[Adapter] = Registry("dataset adapter")

# Modules that register adapters; imported lazily so `import mammolens` stays light.
_ADAPTER_MODULES = ("mias", "folders", "cbis_ddsm", "arrays", "synthetic")


def _load_all() -> None:
    for mod in _ADAPTER_MODULES:
        importlib.import_module(f"mammolens.data.adapters.{mod}")


def detect_kind(path: str | Path) -> str:
    _load_all()
    path = Path(path)
    if not path.exists():
        raise DataError("dataset source not found", path=path)
    for name in ADAPTERS.names():
        if ADAPTERS.get(name).detect(path):
            return name
    raise DataError(
        f"cannot tell what kind of dataset this is; pass a kind (one of: {', '.join(ADAPTERS.names())})",
        path=path,
    )


def load_source(
    path: str | Path, kind: str | None = None, *, require_images: bool = True, **options: Any
) -> SourceResult:
    """Read a dataset source into a manifest; ``kind`` is detected from the path when omitted."""
    _load_all()
    path = Path(path)
    if not path.exists():
        raise DataError("dataset source not found", path=path)
    kind = kind or detect_kind(path)
    return ADAPTERS.get(kind).load(path, require_images=require_images, **options)
