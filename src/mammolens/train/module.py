"""The LightningModule that trains any MammoModel, and the per-epoch record a run leaves behind.

Validation metrics are computed once per epoch over the whole validation part (every rank sees all
of it), so val loss, accuracy and AUC are exact, not averages of batch values. Each epoch's row goes
into ``history``, which travels in the checkpoint with the RNG state: a resumed run continues the
record and the random stream where the interrupted one stopped.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch

from mammolens.evaluate.metrics import roc_auc
from mammolens.models.base import MammoModel
from mammolens.train.config import TrainConfig
from mammolens.train.losses import ClassificationLoss, probabilities
from mammolens.train.optim import build_optimizer, build_scheduler
from mammolens.train.transfer import TransferPlan


class ClassifierModule(L.LightningModule):
    """Loss, optimiser, schedule and transfer mode around ``model``; ``inputs='features'`` trains the head alone."""

    def __init__(
        self,
        model: MammoModel,
        cfg: TrainConfig,
        class_weight: torch.Tensor | None = None,
        *,
        inputs: Literal["images", "features"] = "images",
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.inputs = inputs
        self.plan = TransferPlan(cfg.transfer, cfg.unfreeze_last_n, cfg.head_epochs, cfg.finetune_lr_scale)
        self.plan.prepare(model)
        self.loss_fn = ClassificationLoss(cfg.loss, class_weight, cfg.focal_gamma)
        self.history: list[dict[str, float]] = []
        self._train_stats = torch.zeros(3)  # loss * n, correct, n
        self._epoch_lr = math.nan
        self._val_logits: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inputs == "features":
            return self.model.forward_head(x)
        if self.cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.plan.features_frozen(self.current_epoch):
            with torch.no_grad():
                features = self.model.forward_features(x)
            return self.model.forward_head(features)
        return self.model(x)

    def on_fit_start(self) -> None:
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        self.model.to(memory_format=torch.contiguous_format)  # what safetensors and exporters expect

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if mode:
            self.plan.hold_frozen_in_eval(self.model, self.current_epoch)
        return self

    def on_train_epoch_start(self) -> None:
        self.plan.hold_frozen_in_eval(self.model, self.current_epoch)
        self._train_stats = torch.zeros(3, device=self.device)
        # Epoch-interval schedules step before validation, so the epoch's lr is read here.
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        with torch.no_grad():
            correct = (probabilities(logits).argmax(1) == y).sum().float()
            self._train_stats += torch.stack([loss.detach().float() * len(y), correct, correct.new_tensor(len(y))])
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(y))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_logits, self._val_targets = [], []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._val_logits.append(self(x).float())
        self._val_targets.append(y)

    def on_validation_epoch_end(self) -> None:
        logits, targets = torch.cat(self._val_logits), torch.cat(self._val_targets)
        probs = probabilities(logits).cpu().numpy()
        labels = targets.cpu().numpy()
        metrics = {
            "val_loss": float(self.loss_fn(logits, targets)),
            "val_acc": float((probs.argmax(1) == labels).mean()),
            "val_auc": _nan_if_none(roc_auc(labels, probs)),
        }
        fitting = self.trainer.state.fn == "fit"
        if fitting:
            # Sum over ranks: each trained on its own shard of the epoch.
            loss_sum, correct, count = self.trainer.strategy.reduce(self._train_stats, reduce_op="sum").tolist()
            metrics |= {
                "train_loss": loss_sum / count if count else math.nan,
                "train_acc": correct / count if count else math.nan,
                "lr": self._epoch_lr,
            }
        self.log_dict(metrics, prog_bar=True, sync_dist=True)
        if fitting:
            self.history.append({"epoch": self.current_epoch + 1, **metrics})

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.plan.param_groups(self.model, self.cfg.lr), self.cfg)
        scheduler = build_scheduler(optimizer, self.cfg)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mammolens"] = {
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mammolens", {})
        self.history = list(state.get("history", []))
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        cuda_rng = state.get("cuda_rng", [])
        if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_rng)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
