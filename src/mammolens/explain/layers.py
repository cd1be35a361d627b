"""Which layer a CAM reads: the model's own choice, or one the user names.

Every registered model says where its last spatial map is (``cam_target_layers()``, one per
backbone for a fusion model), so nobody has to guess. A user may name any module instead, by its
full dotted name or by a unique ending of it (``features.norm5``); an unknown name is one line
listing the stage-level names that are worth trying.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mammolens.models.base import MammoModel
from mammolens.utils.errors import ConfigError


def default_layers(model: MammoModel) -> dict[str, nn.Module]:
    """Branch name -> last spatial layer, as the model declares it."""
    return dict(model.cam_target_layers())


def candidate_layer_names(model: MammoModel) -> list[str]:
    """Full names of the modules worth targeting: each stage's modules and the default CAM layers."""
    names = {id(m): n for n, m in model.named_modules() if n}
    wanted: list[nn.Module] = []
    for block in model.backbone_blocks():
        wanted.extend(block if isinstance(block, nn.ModuleList) else [block])  # a stage group, or one stage
    wanted.extend(default_layers(model).values())
    seen: list[str] = []
    for module in wanted:
        name = names.get(id(module))
        if name and name not in seen:
            seen.append(name)
    return seen


def resolve_layers(model: MammoModel, layer: str | Sequence[str] | None) -> dict[str, nn.Module]:
    """``None`` -> the model's defaults; otherwise name -> module for each named layer."""
    if layer is None:
        return default_layers(model)
    requested = [layer] if isinstance(layer, str) else list(layer)
    modules = dict(model.named_modules())
    resolved: dict[str, nn.Module] = {}
    for name in requested:
        if name in modules and name:
            resolved[name] = modules[name]
            continue
        matches = [full for full in modules if full.endswith("." + name)]
        if len(matches) == 1:
            resolved[name] = modules[matches[0]]
            continue
        problem = f"matches {len(matches)} modules ({', '.join(matches[:4])}...)" if matches else "does not exist"
        raise ConfigError(
            f"layer {name!r} {problem} in model {model.config.get('name', type(model).__name__)!r}; "
            f"valid layers include: {', '.join(candidate_layer_names(model))}"
        )
    return resolved
