"""Which parts of a model learn, epoch by epoch: the seed projects' three transfer-learning modes.

- ``full``: everything trains.
- ``frozen``: only ``head_modules`` train; the rest is held in eval mode, so BatchNorm statistics and
  dropout of the pretrained backbone do not move.
- ``finetune-last-N``: the head trains alone for ``head_epochs``, then the last N ``backbone_blocks``
  join it at ``lr * finetune_lr_scale``.

``requires_grad`` is fixed once for the whole run (DDP registers the parameters it synchronises when
it wraps the model); the head-only phase of finetune-last-N instead runs the backbone under no_grad,
so those blocks get no gradient and no optimiser step (and DDP must look for unused parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from mammolens.models.base import MammoModel
from mammolens.utils.errors import ConfigError


def _model_parts(model: MammoModel, method: str) -> list[nn.Module]:
    try:
        return list(getattr(model, method)())
    except NotImplementedError:
        raise ConfigError(
            f"train.transfer: model {model.config.get('name', type(model).__name__)!r} does not implement {method}()"
        ) from None


@dataclass(frozen=True)
class TransferPlan:
    mode: str = "full"
    unfreeze_last_n: int = 1
    head_epochs: int = 0
    finetune_lr_scale: float = 0.1

    def head(self, model: MammoModel) -> list[nn.Module]:
        return _model_parts(model, "head_modules")

    def finetune_blocks(self, model: MammoModel) -> list[nn.Module]:
        """The backbone blocks that train after the head-only epochs (none outside finetune-last-N)."""
        if self.mode != "finetune-last-N":
            return []
        blocks = _model_parts(model, "backbone_blocks")
        if self.unfreeze_last_n > len(blocks):
            raise ConfigError(
                f"train.unfreeze_last_n: {self.unfreeze_last_n} blocks asked, "
                f"the model has {len(blocks)} backbone blocks"
            )
        return blocks[len(blocks) - self.unfreeze_last_n :]

    def prepare(self, model: MammoModel) -> None:
        """Set ``requires_grad`` for the whole run: everything, or the head plus the blocks to fine-tune."""
        if self.mode == "full":
            model.requires_grad_(True)
            return
        model.requires_grad_(False)
        for module in self.head(model) + self.finetune_blocks(model):
            module.requires_grad_(True)

    def features_frozen(self, epoch: int) -> bool:
        """Whether ``forward_features`` is fixed during ``epoch`` (0-based) and may run without autograd."""
        return self.mode == "frozen" or (self.mode == "finetune-last-N" and epoch < self.head_epochs)

    def hold_frozen_in_eval(self, model: MammoModel, epoch: int) -> None:
        """Call after ``model.train()``: put every part that does not learn in ``epoch`` back into eval mode."""
        if self.mode == "full":
            return
        model.eval()
        learning = self.head(model) + ([] if self.features_frozen(epoch) else self.finetune_blocks(model))
        for module in learning:
            module.train()

    def param_groups(self, model: MammoModel, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups: head (and, in full mode, everything) at ``lr``; fine-tuned blocks at the scaled lr."""
        if self.mode == "full":
            return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
        groups = [{"params": [p for m in self.head(model) for p in m.parameters()], "lr": lr}]
        blocks = [p for m in self.finetune_blocks(model) for p in m.parameters()]
        if blocks:
            groups.append({"params": blocks, "lr": lr * self.finetune_lr_scale})
        return groups
