"""Adapter registry: a source on disk (MIAS, CBIS-DDSM, VinDr-Mammo, RSNA, CMMD, INbreast, class folders,
arrays, synthetic) -> Manifest.

Each adapter module registers an ``Adapter`` under its name. ``load_source`` picks one by name or by
asking each adapter whether it recognises the path, so ``mammolens data inspect PATH`` needs no flags.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammolens.data.manifest import Manifest
from mammolens.utils.errors import ConfigError, DataError
from mammolens.utils.registry import Registry


@dataclass
class SourceResult:
    """What an adapter read: the manifest plus what ``data inspect`` should tell the user."""

    manifest: Manifest
    notes: list[str] = field(default_factory=list)  # human lines, e.g. rows without coordinates
    missing_files: list[str] = field(default_factory=list)  # only when require_images=False
    bad_files: list[str] = field(default_factory=list)  # "path: why" for unreadable files (require_images=False)


@dataclass(frozen=True)
class Adapter:
    detect: Callable[[Path], bool]
    # load(path, *, require_images: bool, <options as keyword-only parameters>) -> SourceResult.
    # With require_images=True a missing image is a DataError naming the file; with False it is
    # listed in missing_files. load_source checks option names against that signature.
    load: Callable[..., SourceResult]
    description: str = ""
    # near_miss(path) -> why a path that almost fits this adapter does not (None: not close)
    near_miss: Callable[[Path], str | None] | None = None


ADAPTERS: Registry[Adapter] = Registry("dataset adapter")

# Modules that register adapters; imported lazily so `import mammolens` stays light.
_ADAPTER_MODULES = ("mias", "vindr", "rsna", "cmmd", "inbreast", "folders", "cbis_ddsm", "arrays", "synthetic")


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
    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)
        why = adapter.near_miss(path) if adapter.near_miss else None
        if why:
            raise DataError(f"not a {name} source: {why}", path=path)
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
    adapter = ADAPTERS.get(kind)
    _check_options(kind, adapter.load, options)
    return adapter.load(path, require_images=require_images, **options)


def _check_options(kind: str, load: Callable[..., SourceResult], options: dict[str, Any]) -> None:
    """Option names must be the adapter's keyword-only parameters (other than require_images)."""
    params = inspect.signature(load).parameters.values()
    known = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "require_images"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"known: {', '.join(known)}" if known else "it takes none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for the {kind} adapter; {takes}")
