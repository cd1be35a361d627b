"""``fit``: train a MammoModel on an ArrayDataModule and leave a complete, resumable run directory.

out_dir/
  checkpoints/last.ckpt   every epoch (resume from it), checkpoints/best.ckpt (lowest val loss)
  history.csv             one row per epoch, rewritten after each
  learning_curves.png     loss and accuracy/AUC per epoch, train vs val
  logs/, tensorboard/     Lightning's CSV and TensorBoard logs

Multi-GPU and multi-node runs need only ``devices``, ``strategy: ddp`` and ``num_nodes``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mammolens.models.base import MammoModel
from mammolens.train.config import TrainConfig
from mammolens.train.curves import plot_learning_curves, write_history
from mammolens.train.datamodule import ArrayDataModule
from mammolens.train.features import part_features
from mammolens.train.losses import class_weights, num_outputs
from mammolens.train.module import ClassifierModule
from mammolens.utils.errors import ConfigError, DataError

_DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


@dataclass
class FitResult:
    """``model`` holds the best epoch's weights, in eval mode; epochs count from 1."""

    model: MammoModel
    best_checkpoint: Path
    best_epoch: int
    history: list[dict[str, float]]
    stopped_early: bool
    normalisation: dict[str, float]
    out_dir: Path
    descriptor_head: dict[str, Any] | None = None  # the logistic head's descriptor share (see linear_head.py)


class _EpochLines(Callback):
    """One line per epoch on stderr, for logs and pipes where a progress bar shows only its last state."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: ClassifierModule) -> None:
        if trainer.is_global_zero and trainer.state.fn == "fit" and pl_module.history:
            row = pl_module.history[-1]
            values = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
            print(f"epoch {row['epoch']}/{trainer.max_epochs}  {values}", file=sys.stderr, flush=True)


class _DropTip(logging.Filter):
    """Lightning's advertisement for its cloud logger is not something a mammolens user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


class _HistoryWriter(Callback):
    """Rewrites history.csv after every validation, before the checkpoint of that epoch is saved."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer: L.Trainer, pl_module: ClassifierModule) -> None:
        if trainer.is_global_zero and trainer.state.fn == "fit":
            write_history(pl_module.history, self.path)


def fit(
    model: MammoModel,
    datamodule: ArrayDataModule,
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool | str | Path = False,
    *,
    callbacks: Sequence[Callback] = (),
    feature_cache_dir: str | Path | None = None,
    descriptors: np.ndarray | None = None,
    descriptor_names: Sequence[str] = (),
    groups: Sequence[Any] | None = None,
) -> FitResult:
    """Train ``model`` with ``cfg``; ``resume=True`` continues ``out_dir``'s run from its last checkpoint.

    ``feature_cache_dir`` (default ``out_dir/feature_cache``) is where the feature fast path keeps
    backbone features; share it between runs to reuse them. ``descriptors`` ((N, K), one row per
    datamodule sample) and ``groups`` (patient of each sample) serve ``head: logistic``.
    """
    out_dir = Path(out_dir)
    if cfg.head == "logistic":
        return _fit_logistic(model, datamodule, cfg, out_dir, feature_cache_dir, descriptors, descriptor_names, groups)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_path = _resume_checkpoint(resume, ckpt_dir)
    _check_datamodule(datamodule, cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    num_classes = datamodule.num_classes
    expected_outputs = num_outputs(num_classes, cfg.loss)
    weight = class_weights(cfg.class_weights, datamodule.part_labels("train"), num_classes)
    data, inputs = datamodule, "images"
    if cfg.feature_fast_path:
        cache_dir = Path(feature_cache_dir) if feature_cache_dir is not None else out_dir / "feature_cache"
        device = feature_device(cfg)
        data = datamodule.with_features(
            {p: part_features(model, datamodule, p, device=device, cache_dir=cache_dir, progress=cfg.progress) for p in ("train", "val")}
        )
        inputs = "features"
    _check_outputs(model, data, inputs, expected_outputs, cfg.loss, num_classes)

    module = ClassifierModule(model, cfg, weight, inputs=inputs)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1, enable_version_counter=False
    )
    # A second, unmonitored checkpoint: save_last alone only writes in epochs that improve the best.
    last_checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    all_callbacks: list[Callback] = [checkpoint, last_checkpoint, _HistoryWriter(out_dir / "history.csv"), *callbacks]
    bar = cfg.progress and sys.stderr.isatty()
    if cfg.progress and not bar:
        all_callbacks.append(_EpochLines())
    if cfg.patience:
        all_callbacks.append(
            EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience, min_delta=cfg.min_delta)
        )
    tip_filter = _DropTip()
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.addFilter(tip_filter)
    try:
        trainer = _trainer(cfg, out_dir, all_callbacks, progress_bar=bar)
    finally:
        lightning_log.removeFilter(tip_filter)
    with warnings.catch_warnings():
        # Lightning's own deprecation notice, and its hint that small datasets log less often than
        # log_every_n_steps: neither is actionable by a mammolens user.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", message=r"The number of training batches .* smaller than the logging interval")
        # A resumed run writes into its own checkpoint folder; that it is not empty is the point.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    # Read back from disk, so every strategy (spawned workers included) ends with the same record.
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    history = list(last["mammolens"]["history"])
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else ckpt_dir / "last.ckpt"
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    model.requires_grad_(True)  # undo the transfer mode's freezing: explainers need gradients
    model.eval()
    best_epoch = int(best["epoch"]) + 1
    if trainer.is_global_zero:
        write_history(history, out_dir / "history.csv")
        plot_learning_curves(history, out_dir / "learning_curves.png", best_epoch=best_epoch)
    return FitResult(
        model=model,
        best_checkpoint=best_path,
        best_epoch=best_epoch,
        history=history,
        stopped_early=len(history) < cfg.epochs,
        normalisation=dict(datamodule.normalisation),
        out_dir=out_dir,
    )


def _fit_logistic(model: MammoModel, datamodule: ArrayDataModule, cfg: TrainConfig, out_dir: Path,
                  feature_cache_dir: str | Path | None, descriptors: np.ndarray | None,
                  descriptor_names: Sequence[str], groups: Sequence[Any] | None) -> FitResult:
    """The ``head: logistic`` fit: no epochs, so no checkpoints; ``linear_head.json`` records the C search."""
    from mammolens.train.linear_head import fit_linear_head, install_linear_head, last_linear
    from mammolens.utils.atomic import write_json

    _check_datamodule(datamodule, cfg)
    rows = datamodule.rows("train")
    blocks, n_features = [], 0
    if cfg.head_inputs in ("features", "both"):
        cache_dir = Path(feature_cache_dir) if feature_cache_dir is not None else out_dir / "feature_cache"
        features = part_features(model, datamodule, "train", device=feature_device(cfg), cache_dir=cache_dir,
                                 progress=cfg.progress)
        blocks.append(features)
        n_features = features.shape[1]
    if cfg.head_inputs in ("descriptors", "both"):
        if descriptors is None or np.asarray(descriptors).ndim != 2 or np.asarray(descriptors).shape[1] == 0:
            raise ConfigError(f"train.head_inputs: {cfg.head_inputs!r} needs lesion descriptors: add a "
                              "lesion_descriptors step to preprocess.steps")
        blocks.append(np.asarray(descriptors, dtype=np.float64)[rows])
    x = np.concatenate(blocks, axis=1)
    y = datamodule.labels[rows]
    outputs = last_linear(model).out_features
    head = fit_linear_head(x, y, None if groups is None else np.asarray(groups)[rows], cs=list(cfg.logistic_c),
                           balanced=cfg.class_weights == "balanced", outputs=outputs, seed=cfg.seed)
    descriptor_head = install_linear_head(model, head, n_features)
    if descriptor_head is not None:
        descriptor_head["names"] = list(descriptor_names)
    model.eval()
    record = out_dir / "linear_head.json"
    write_json(record, {"C": head.c, "inner_cv_scores": {str(c): v for c, v in head.scores.items()},
                        "inputs": cfg.head_inputs, "features": n_features,
                        "descriptors": list(descriptor_names) if cfg.head_inputs != "features" else []})
    return FitResult(model=model, best_checkpoint=record, best_epoch=0, history=[], stopped_early=False,
                     normalisation=dict(datamodule.normalisation), out_dir=out_dir, descriptor_head=descriptor_head)


def _resume_checkpoint(resume: bool | str | Path, ckpt_dir: Path) -> Path | None:
    last = ckpt_dir / "last.ckpt"
    if resume is False:
        if last.exists():
            raise ConfigError(
                "this output directory already holds a run (checkpoints/last.ckpt); resume it or choose another",
                path=ckpt_dir.parent,
            )
        return None
    path = last if resume is True else Path(resume)
    if not path.is_file():
        raise ConfigError("nothing to resume: checkpoint not found", path=path)
    return path


def _check_datamodule(datamodule: ArrayDataModule, cfg: TrainConfig) -> None:
    """The datamodule must load what the config says, or the bundle would record the wrong recipe."""
    for field in ("batch_size", "augment", "num_workers", "seed", "drop_last"):
        have, want = getattr(datamodule, field), getattr(cfg, field)
        if have != want:
            raise ConfigError(
                f"train.{field} is {want!r} but the datamodule was built with {have!r}; "
                "build it with the same value (ArrayDataModule.from_config)"
            )
    if len(datamodule.parts.get("val", ())) == 0:
        raise DataError("parts: training needs a non-empty 'val' part (early stopping and the best epoch use it)")


def _check_outputs(
    model: MammoModel, data: ArrayDataModule, inputs: str, expected: int, loss: str, num_classes: int
) -> None:
    x, _ = data.dataset("train")[0]
    x = x[None].to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model.forward_head(x) if inputs == "features" else model(x)
    model.train(was_training)
    if logits.ndim != 2 or logits.shape[1] != expected:
        raise ConfigError(
            f"model outputs logits of shape {tuple(logits.shape)}; loss {loss!r} on a {num_classes}-class task "
            f"needs (B, {expected}): create the model with num_classes={expected}"
        )


def feature_device(cfg: TrainConfig) -> torch.device:
    if cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _trainer(cfg: TrainConfig, out_dir: Path, callbacks: list[Callback], *, progress_bar: bool) -> L.Trainer:
    strategy = cfg.strategy
    if cfg.transfer == "finetune-last-N" and strategy in _DDP_STRATEGIES:
        # The blocks to fine-tune get no gradient during the head-only epochs; DDP must expect that.
        strategy = f"{strategy}_find_unused_parameters_true"
    try:
        return L.Trainer(
            max_epochs=cfg.epochs,
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            strategy=strategy,
            num_nodes=cfg.num_nodes,
            precision=cfg.precision,
            deterministic=cfg.deterministic,
            log_every_n_steps=cfg.log_every_n_steps,
            enable_progress_bar=progress_bar,
            enable_model_summary=cfg.progress,
            callbacks=callbacks,
            logger=[CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")],
            default_root_dir=out_dir,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # ArrayDataModule shards the training set itself
        )
    except (MisconfigurationException, ValueError) as exc:
        raise ConfigError(f"train: {exc}") from None
