"""The patch fine-tuning settings (``model.options.training.finetune``), apart from the code that
fine-tunes, so the training config can name them without importing torch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mammolens.utils.errors import ConfigError

_UNFREEZE = re.compile(r"all|last_([1-9][0-9]*)")


@dataclass
class PatchFinetune:
    """``model.options.training.finetune``: absent (or null) keeps the encoder frozen."""

    epochs: int = 4
    lr: float = 1e-4  # AdamW, encoder and head alike
    weight_decay: float = 1e-4
    batch_size: int = 32
    unfreeze: str = "all"  # all | last_<k>: only the encoder's last k stages train (with the head)
    augment: bool = True  # the 8 flips/rotations, brightness/contrast jitter, shifts
    shift: int = 4  # pixels a patch may move each way when augmenting
    intensity: float = 0.1  # contrast scale 1 ± this, brightness ± half of it, on breast pixels only
    seed: int = 0

    def __post_init__(self) -> None:
        where = "model.options.training.finetune"
        for name, low in (("epochs", 0), ("batch_size", 1), ("shift", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{where}.{name}: must be an integer >= {low}, got {value!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (name == "lr" and value == 0):
                raise ConfigError(f"{where}.{name}: must be a number {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
        if not 0.0 <= self.intensity <= 0.5:
            raise ConfigError(f"{where}.intensity: must lie in [0, 0.5], got {self.intensity!r}")
        if not isinstance(self.unfreeze, str) or not _UNFREEZE.fullmatch(self.unfreeze):
            raise ConfigError(f"{where}.unfreeze: {self.unfreeze!r} is not 'all' or 'last_<k>' (e.g. last_2)")

    def last_stages(self, available: int) -> int:
        """How many of the encoder's ``available`` stages train."""
        match = _UNFREEZE.fullmatch(self.unfreeze)
        k = available if match.group(1) is None else int(match.group(1))
        if k > available:
            raise ConfigError(f"model.options.training.finetune.unfreeze: {self.unfreeze} but the encoder has "
                              f"{available} stages")
        return k
