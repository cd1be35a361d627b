"""Keras 3 ``.keras`` weight files read without TensorFlow: a zip holding ``config.json`` and an HDF5.

The HDF5 names each layer's group after its class (``conv2d``, ``conv2d_1``, ...), numbered in
layer order within its model; ``config.json`` gives the layers' own names in that order. Tensors
come back under those names (``densenet121/conv1_conv.kernel``) in Keras' own layout (kernels
HWIO); ``weights.py`` maps them onto timm. Every weighted group of the file is accounted for, so
a file that does not match its config is an error, never a partly read one.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammolens.utils.errors import ConfigError

# Variable names of each weighted layer class, in the order Keras stores them (vars/0, vars/1, ...).
_VARIABLES = {
    "Conv2D": lambda c: ["kernel", "bias"] if c.get("use_bias", True) else ["kernel"],
    "Dense": lambda c: ["kernel", "bias"] if c.get("use_bias", True) else ["kernel"],
    "BatchNormalization": lambda c: [
        *(["gamma"] if c.get("scale", True) else []),
        *(["beta"] if c.get("center", True) else []),
        "moving_mean",
        "moving_variance",
    ],
}
_CONTAINERS = ("Functional", "Sequential", "Model")


def read_keras(path: str | Path) -> dict[str, torch.Tensor]:
    """``{"<model>/<layer>.<variable>": tensor}`` for every weighted layer of a ``.keras`` file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise ConfigError(f"not a Keras 3 .keras file ({type(exc).__name__}: {str(exc)[:120]})", path=path) from None
    try:
        import h5py
    except ImportError:
        raise ConfigError("reading a .keras file needs h5py (pip install h5py, or mammolens[real-data])", path=path) from None

    state: dict[str, torch.Tensor] = {}
    with h5py.File(io.BytesIO(weights), "r") as h5:
        used = _walk(config, h5["layers"] if "layers" in h5 else h5, "", state, path)
        weighted = set()
        h5.visititems(lambda name, obj: weighted.add(name.rsplit("/vars/", 1)[0]) if "/vars/" in name else None)
        left = sorted(g for g in weighted if g not in used and not g.startswith("optimizer"))
        if left:
            raise ConfigError(f"Keras weights group {left[0]!r} matches no layer of config.json", path=path)
    return state


def _walk(layer: dict[str, Any], group: Any, prefix: str, state: dict[str, torch.Tensor], path: Path) -> set[str]:
    """Fill ``state`` from a container layer's sub-layers; returns the HDF5 groups read."""
    used: set[str] = set()
    seen: Counter[str] = Counter()
    for sub in layer["config"].get("layers", []):
        cls, cfg = sub["class_name"], sub["config"]
        base = _snake_case(cls)
        index = seen[base]
        seen[base] += 1
        if cls not in _VARIABLES and cls not in _CONTAINERS:
            continue
        name = base if index == 0 else f"{base}_{index}"
        if name not in group:
            if cls in _CONTAINERS:
                continue
            raise ConfigError(f"Keras layer {cfg['name']!r} has no weights group {name!r}", path=path)
        if cls in _CONTAINERS:
            used |= _walk(sub, group[name]["layers"], f"{prefix}{cfg['name']}/", state, path)
            continue
        names = _VARIABLES[cls](cfg)
        stored = group[name].get("vars", {})
        if len(stored) != len(names):
            raise ConfigError(
                f"Keras layer {cfg['name']!r} ({cls}) stores {len(stored)} variables, its config implies {len(names)}",
                path=path,
            )
        for i, var in enumerate(names):
            state[f"{prefix}{cfg['name']}.{var}"] = torch.from_numpy(np.asarray(stored[str(i)], dtype=np.float32))
        used.add(group[name].name.lstrip("/"))
    return used


def _snake_case(name: str) -> str:
    """Keras' own ``to_snake_case``: how a layer's weights group is named after its class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
