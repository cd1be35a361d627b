"""The ``train:`` section of an experiment: checked when built, so a bad value fails before any epoch runs.

Load with ``mammolens.utils.configuration.from_dict(TrainConfig, data, "train")``: unknown keys and wrong
types are ConfigErrors naming the dotted key; the checks below name the field and the allowed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from mammolens.train.registries import LOSSES, OPTIMIZERS, SCHEDULERS
from mammolens.utils.errors import ConfigError

TransferMode = Literal["full", "frozen", "finetune-last-N"]
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class AugmentConfig:
    """Train-time augmentation, drawn per sample and epoch from the seed (the seed projects' Keras ranges).

    ``rotation``: angle uniform in [-rotation, rotation] degrees; ``hflip``/``vflip``: each flip with
    probability 0.5; ``zoom``: scale uniform in [lo, hi] (> 1 zooms in); ``p``: chance a sample is
    augmented at all. Exposed background is filled with 0 (black, as a mammogram's is).
    """

    rotation: float = 0.0
    hflip: bool = False
    vflip: bool = False
    zoom: tuple[float, float] = (1.0, 1.0)
    p: float = 1.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.rotation <= 180.0, f"train.augment.rotation: {self.rotation} is not within 0..180 degrees")
        _require(len(self.zoom) == 2, f"train.augment.zoom: expected [low, high], got {list(self.zoom)}")
        self.zoom = (float(self.zoom[0]), float(self.zoom[1]))
        lo, hi = self.zoom
        _require(0.0 < lo <= hi, f"train.augment.zoom: need 0 < low <= high, got {list(self.zoom)}")
        _require(0.0 <= self.p <= 1.0, f"train.augment.p: {self.p} is not a probability")


@dataclass
class TrainConfig:
    """How to train one model; every field has a YAML key of the same name under ``train:``."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd and rmsprop only
    scheduler: str = "none"
    lr_step_size: int = 10  # 'step': epochs between decays
    lr_gamma: float = 0.1  # 'step' and 'plateau': decay factor
    lr_patience: int = 3  # 'plateau': epochs without val-loss gain before decaying
    loss: str = "ce"
    class_weights: str | list[float] = "none"  # 'none' | 'balanced' | one weight per class
    focal_gamma: float = 2.0
    patience: int = 10  # early stopping on val loss; 0 turns it off (the best epoch is restored either way)
    min_delta: float = 0.0
    augment: AugmentConfig | None = None  # None: no augmentation
    transfer: TransferMode = "full"
    unfreeze_last_n: int = 1  # finetune-last-N: backbone blocks unfrozen after the head-only epochs
    head_epochs: int = 1  # finetune-last-N: epochs that train the head alone
    finetune_lr_scale: float = 0.1  # finetune-last-N: unfrozen blocks learn at lr * this
    feature_fast_path: bool = False  # frozen only: cache backbone features once, then train the head on them
    # 'mlp': the model's head trained by Lightning; 'logistic': (feature fast path) standardised features ->
    # L2 logistic regression, C chosen from logistic_c by patient-grouped 3-fold cv on the training part.
    head: Literal["mlp", "logistic"] = "mlp"
    # What the logistic head sees: backbone 'features', the pipeline's lesion 'descriptors', or 'both'.
    head_inputs: Literal["features", "descriptors", "both"] = "features"
    logistic_c: list[float] = field(default_factory=lambda: [0.0001, 0.001, 0.01, 0.1, 1.0])
    tta: int = 1  # 8: average probabilities over the 8 flips/rotations (cv scoring and the bundle alike)
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms (slower; some GPU ops refuse)
    devices: int | str | list[int] = 1
    accelerator: str = "auto"
    strategy: str = "auto"  # 'ddp' for several GPUs / nodes
    num_nodes: int = 1
    num_workers: int = 0
    drop_last: bool = False
    precision: int | str = "32-true"
    log_every_n_steps: int = 10
    progress: bool = True
    channels_last: bool = True  # NHWC convolutions in training and feature extraction: faster on CPU (benchmarks/)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_nodes", "log_every_n_steps", "lr_step_size", "unfreeze_last_n"):
            _require(getattr(self, name) >= 1, f"train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in (
            "weight_decay", "focal_gamma", "patience", "min_delta", "num_workers", "lr_patience", "head_epochs"
        ):
            _require(getattr(self, name) >= 0, f"train.{name}: must be >= 0, got {getattr(self, name)}")
        _require(math.isfinite(self.lr) and self.lr > 0, f"train.lr: must be a positive number, got {self.lr}")
        _require(0.0 <= self.momentum < 1.0, f"train.momentum: must be within [0, 1), got {self.momentum}")
        _require(0.0 < self.lr_gamma <= 1.0, f"train.lr_gamma: must be within (0, 1], got {self.lr_gamma}")
        _require(self.finetune_lr_scale > 0, f"train.finetune_lr_scale: must be > 0, got {self.finetune_lr_scale}")
        for name, registry in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("loss", LOSSES)):
            value = getattr(self, name)
            _require(value in registry, f"train.{name}: unknown {name} {value!r}; known: {', '.join(registry.names())}")
        if isinstance(self.class_weights, str):
            _require(
                self.class_weights in ("none", "balanced"),
                f"train.class_weights: {self.class_weights!r} is not 'none', 'balanced' or a list of weights",
            )
        _require(
            self.transfer in ("full", "frozen", "finetune-last-N"),
            f"train.transfer: {self.transfer!r} is not one of 'full', 'frozen', 'finetune-last-N'",
        )
        if self.transfer == "finetune-last-N":
            _require(
                self.head_epochs < self.epochs,
                f"train.head_epochs: {self.head_epochs} head-only epochs leave none of the {self.epochs} to fine-tune",
            )
        if self.feature_fast_path:
            _require(
                self.transfer == "frozen",
                "train.feature_fast_path: needs transfer: frozen (the backbone must not change)",
            )
            _require(
                self.augment is None, "train.feature_fast_path: features are cached un-augmented; set augment to null"
            )
        _require(self.head in ("mlp", "logistic"), f"train.head: {self.head!r} is not 'mlp' or 'logistic'")
        _require(self.head_inputs in ("features", "descriptors", "both"),
                 f"train.head_inputs: {self.head_inputs!r} is not 'features', 'descriptors' or 'both'")
        if self.head == "logistic":
            _require(self.feature_fast_path, "train.head: logistic fits on cached features; set feature_fast_path: true")
            _require(bool(self.logistic_c) and all(c > 0 for c in self.logistic_c),
                     f"train.logistic_c: needs positive values, got {self.logistic_c}")
        else:
            _require(self.head_inputs == "features", "train.head_inputs: descriptors need head: logistic")
        _require(self.tta in (1, 8), f"train.tta: must be 1 or 8, got {self.tta}")
        _require(
            self.accelerator in ACCELERATORS,
            f"train.accelerator: {self.accelerator!r} is not one of {', '.join(ACCELERATORS)}",
        )
