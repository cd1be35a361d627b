"""Classification losses and the one logits -> probabilities rule that training, bundles and evaluation share.

A binary task is trained either with one logit (``bce``: sigmoid) or two (``ce``/``focal``: softmax);
``probabilities`` turns both into (B, C) so nothing downstream needs to know which. Every loss is a
class-weighted mean, sum(w[y] * l) / sum(w[y]), the normalisation ``torch.nn.CrossEntropyLoss`` uses,
so switching loss never silently changes what a weight means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mammolens.train.registries import LOSSES
from mammolens.utils.errors import ConfigError, DataError

LossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A per-sample loss ``fn(logits, targets, focal_gamma) -> (B,)`` and whether it wants one logit."""

    fn: LossFn
    single_logit: bool = False




def _two_logits(logits: torch.Tensor) -> torch.Tensor:
    # softmax([0, z]) == [1 - sigmoid(z), sigmoid(z)]: one rule for 1- and 2-logit binary models.
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, focal_gamma: float) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def _binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, focal_gamma: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits[:, 0], targets.to(logits.dtype), reduction="none")


def _focal(logits: torch.Tensor, targets: torch.Tensor, focal_gamma: float) -> torch.Tensor:
    # Lin et al. 2017, softmax form: down-weights easy examples; gamma = 0 is cross-entropy.
    log_pt = F.log_softmax(_two_logits(logits), dim=1).gather(1, targets[:, None])[:, 0]
    return -((1.0 - log_pt.exp()) ** focal_gamma) * log_pt


LOSSES.add("ce", LossSpec(_cross_entropy))
LOSSES.add("bce", LossSpec(_binary_cross_entropy, single_logit=True))
LOSSES.add("focal", LossSpec(_focal))


class ClassificationLoss(nn.Module):
    """Registered loss ``name`` as a class-weighted mean over the batch."""

    def __init__(self, name: str, weight: torch.Tensor | None = None, focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.name = name
        self.spec = LOSSES.get(name)
        self.focal_gamma = focal_gamma
        self.register_buffer("weight", None if weight is None else weight.float(), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = self.spec.fn(logits.float(), targets, self.focal_gamma)
        if self.weight is None:
            return per_sample.mean()
        w = self.weight[targets]
        return (w * per_sample).sum() / w.sum()


def num_outputs(num_classes: int, loss: str) -> int:
    """Logits the model must output for ``num_classes`` classes trained with ``loss``."""
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if LOSSES.get(loss).single_logit:
        if num_classes != 2:
            raise ConfigError(
                f"train.loss: {loss!r} is for binary tasks (1 logit); "
                f"this task has {num_classes} classes, use 'ce' or 'focal'"
            )
        return 1
    return num_classes


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) sigmoid or (B, C) softmax logits -> (B, C) class probabilities (C >= 2)."""
    return F.softmax(_two_logits(logits).float(), dim=1)


def class_weights(spec: str | Sequence[float], train_labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """Per-class loss weights: 'none', 'balanced' (sklearn's n / (C * count)) or one weight per class."""
    if isinstance(spec, str):
        if spec == "none":
            return None
        if spec != "balanced":
            raise ConfigError(f"train.class_weights: {spec!r} is not 'none', 'balanced' or a list of weights")
        from sklearn.utils.class_weight import compute_class_weight

        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
        if (counts == 0).any():
            missing = [int(c) for c in np.flatnonzero(counts == 0)]
            raise DataError(f"train.class_weights 'balanced': class(es) {missing} have no training samples")
        weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=train_labels)
        return torch.tensor(weights, dtype=torch.float32)
    values = [float(v) for v in spec]
    if len(values) != num_classes:
        raise ConfigError(f"train.class_weights has {len(values)} values but the task has {num_classes} classes")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"train.class_weights must be positive finite numbers, got {values}")
    return torch.tensor(values, dtype=torch.float32)
