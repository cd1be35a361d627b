"""Optimisers and learning-rate schedules by name, so a YAML file (or a plug-in) can choose them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer, lr_scheduler

from mammolens.train.registries import OPTIMIZERS, SCHEDULERS

if TYPE_CHECKING:
    from mammolens.train.config import TrainConfig

ParamGroups = list[dict[str, Any]]


OPTIMIZERS.add("adam", lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
OPTIMIZERS.add("adamw", lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
OPTIMIZERS.add(
    "rmsprop",
    lambda groups, cfg: torch.optim.RMSprop(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum),
)
OPTIMIZERS.add(
    "sgd",
    lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum),
)

SCHEDULERS.add("none", lambda opt, cfg: None)
SCHEDULERS.add(
    "cosine",
    lambda opt, cfg: {"scheduler": lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs), "interval": "epoch"},
)
SCHEDULERS.add(
    "step",
    lambda opt, cfg: {
        "scheduler": lr_scheduler.StepLR(opt, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma),
        "interval": "epoch",
    },
)
SCHEDULERS.add(
    "plateau",
    lambda opt, cfg: {
        "scheduler": lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_gamma, patience=cfg.lr_patience),
        "monitor": "val_loss",
        "interval": "epoch",
    },
)


def build_optimizer(groups: ParamGroups, cfg: TrainConfig) -> Optimizer:
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg)


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig) -> dict[str, Any] | None:
    return SCHEDULERS.get(cfg.scheduler)(optimizer, cfg)
