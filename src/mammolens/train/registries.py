"""The training registries (losses, optimisers, schedules), declared without importing torch.

A config is checked against these names before any heavy import; the modules that implement the
entries register them when first used (``Registry.lazy``). A plug-in registers its own entries
into the same registries.
"""

from __future__ import annotations

from mammolens.utils.registry import Registry

LOSSES: Registry = Registry("loss")
OPTIMIZERS: Registry = Registry("optimizer")
# A schedule returns Lightning's lr-scheduler dict (stepped once per epoch), or None for a constant lr.
SCHEDULERS: Registry = Registry("scheduler")

for _name in ("ce", "bce", "focal"):
    LOSSES.lazy(_name, "mammolens.train.losses")
for _name in ("adam", "adamw", "rmsprop", "sgd"):
    OPTIMIZERS.lazy(_name, "mammolens.train.optim")
for _name in ("none", "cosine", "step", "plateau"):
    SCHEDULERS.lazy(_name, "mammolens.train.optim")
