"""Fine-tuning the patch encoder end to end (Shen et al. 2019 train their patch classifier; a frozen
ImageNet encoder separates finding-centred patches from tissue but not well enough for the film).

The encoder and the patch head train together on the training part's patches by class-weighted
cross-entropy, with the 8 flips/rotations, a small brightness/contrast jitter of the breast pixels
and small shifts (a negative only ever shifts as far as keeps it clear of every finding). Training
starts from the frozen encoder with a linear probe as head (so epoch 0 is the frozen model), and the
epoch kept is the one whose patches of the inner validation part's films score best: a fine-tuning
that does not help on validation leaves the frozen encoder in place. BatchNorm keeps its statistics
(the encoder runs in eval mode): batch statistics of 32 small patches are noise, and the probe was
fitted on the running ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mammolens.patches.config import PatchFinetune

if TYPE_CHECKING:
    from mammolens.patches.model import PatchFilmModel


@dataclass
class PatchPixels:
    """Patches to train on, as positions on films held in memory: the film (manifest row) each comes
    from, its top-left corner, its label, and how far it may shift without touching a finding."""

    films: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    slack: np.ndarray
    images: Mapping[int, np.ndarray]
    patch_size: int

    def crops(self, idx: np.ndarray, rng: np.random.Generator | None = None,
              cfg: PatchFinetune | None = None) -> torch.Tensor:
        """(len(idx), 1, p, p) patches; augmented when ``rng`` and an augmenting ``cfg`` are given."""
        p = self.patch_size
        out = np.empty((len(idx), 1, p, p), np.float32)
        augment = rng is not None and cfg is not None and cfg.augment
        for n, i in enumerate(idx):
            film = self.images[int(self.films[i])]
            top, left = (int(v) for v in self.positions[i])
            if augment and self.slack[i]:
                s = int(self.slack[i])
                top = int(np.clip(top + rng.integers(-s, s + 1), 0, film.shape[0] - p))
                left = int(np.clip(left + rng.integers(-s, s + 1), 0, film.shape[1] - p))
            patch = film[top:top + p, left:left + p]
            if augment:
                patch = np.rot90(patch, int(rng.integers(4)))
                patch = patch[:, ::-1] if rng.integers(2) else patch
                scale, offset = 1.0 + rng.uniform(-cfg.intensity, cfg.intensity), rng.uniform(-cfg.intensity, cfg.intensity) / 2
                patch = np.where(patch > 0, np.clip(patch * scale + offset, 1e-3, 1.0), 0.0)  # background stays 0
            out[n, 0] = patch
        return torch.from_numpy(out)


def safe_shift(top: int, left: int, patch_size: int, circles: Sequence[Sequence[float]], shift: int) -> int:
    """The largest shift (each axis, <= ``shift``) that keeps the patch clear of every circle: moving by
    s along both axes brings its nearest point at most s·√2 closer to a centre."""
    best = shift
    for cx, cy, r in circles:
        nx = min(max(cx, left), left + patch_size - 1)
        ny = min(max(cy, top), top + patch_size - 1)
        room = math.hypot(nx - cx, ny - cy) - r
        best = min(best, max(0, math.ceil(room / math.sqrt(2)) - 1))
    return best


def trainable(model: PatchFilmModel, cfg: PatchFinetune) -> list[nn.Parameter]:
    """Freeze the encoder's early stages as ``unfreeze`` says; the patch head always trains."""
    stages = list(model.encoder.stages())
    k = cfg.last_stages(len(stages))
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    params = [p for stage in stages[len(stages) - k:] for p in stage.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params + list(model.patch_head.parameters())


def finetune_encoder(model: PatchFilmModel, train: PatchPixels, val: PatchPixels, cfg: PatchFinetune, *,
                     progress: bool = True) -> dict[str, Any]:
    """Train encoder + patch head on ``train``; keep the epoch (0 = as given) whose ``val`` patches give
    the best abnormal-vs-normal AUC (the lowest loss when they hold one class). Returns the curves."""
    from mammolens.evaluate.metrics import roc_auc

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    counts = np.bincount(train.labels, minlength=model.num_classes).astype(np.float64)
    weight = torch.from_numpy(np.where(counts > 0, counts.sum() / (max((counts > 0).sum(), 1) * np.maximum(counts, 1)), 0.0)).float()
    params = trainable(model, cfg)
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.eval().to(memory_format=torch.channels_last)  # eval: BatchNorm keeps its statistics
    x_val = val.crops(np.arange(len(val.labels)))
    y_val = (val.labels != model.normal_class).astype(int)

    def validate() -> dict[str, float | None]:
        with torch.inference_mode():
            logits = model.patch_head(model.encode(x_val)).float()
            loss = F.cross_entropy(logits, torch.from_numpy(val.labels), weight=weight).item() if len(x_val) else None
            abnormal = 1.0 - torch.softmax(logits, 1)[:, model.normal_class].numpy()
        return {"val_loss": loss, "val_patch_auc": roc_auc(y_val, np.c_[1 - abnormal, abnormal])}

    def score(row: dict[str, Any]) -> float:
        return row["val_patch_auc"] if row["val_patch_auc"] is not None else -(row["val_loss"] or 0.0)

    history = [{"epoch": 0, "train_loss": None, **validate()}]
    best = (score(history[0]), 0, _encoder_state(model))
    seen, seconds = 0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(train.labels))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x = train.crops(idx, rng, cfg).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model.patch_head(model.encoder(model._sized(x))), torch.from_numpy(train.labels[idx]),
                                   weight=weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        seconds += time.perf_counter() - t0
        seen += len(order)
        row = {"epoch": epoch, "train_loss": total / len(order), **validate()}
        history.append(row)
        if progress:
            print(f"finetune epoch {epoch}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']}  "
                  f"val patch AUC {row['val_patch_auc']}", flush=True)
        if score(row) > best[0]:
            best = (score(row), epoch, _encoder_state(model))
    model.load_state_dict(best[2], strict=False)
    for p in model.parameters():
        p.requires_grad_(True)
    return {"history": history, "best_epoch": best[1], "train_patches": len(train.labels), "val_patches": len(val.labels),
            "class_weight": weight.tolist(), "train_patches_per_s": round(seen / seconds, 1) if seconds else None}


def _encoder_state(model: PatchFilmModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(("encoder.", "patch_head."))}
