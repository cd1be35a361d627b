"""``patch-classifier``: a patch classifier slid over the whole preprocessed film.

The model takes the film a Bundle feeds any model ((B, 1, H, W), [0, 1] pixels: its bundles keep the
identity normalisation), cuts it into ``patch_size`` windows every ``stride`` pixels, runs the patch
encoder on the windows that hold breast (at least ``min_tissue`` of non-zero pixels; the others
count as normal tissue) in batches, and gives each window class probabilities: the score map.
The film's scores come from that map:

- ``max`` / ``topk``: per class, the largest (or the mean of the ``top_k`` largest) patch
  probability; the film's normal probability is 1 - the largest abnormal class score, and the
  vector is renormalised (for two classes: P(abnormal) is the max and nothing changes);
- ``stage2``: a small linear model on both summaries, fitted on the training films' maps.

So ``forward_features`` is the (B, 2C) map summary and ``forward_head`` the aggregation; the map
passes through ``map_layer`` (an identity), the CAM target, so Grad-CAM on this model shows the
score map itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammolens.models.base import MammoModel
from mammolens.models.catalog import BACKBONES, MODELS
from mammolens.patches.geometry import axis_starts, check_window
from mammolens.patches.sampling import PatchTraining
from mammolens.utils.configuration import from_dict
from mammolens.utils.errors import ConfigError, DataError

AGGREGATES = ("max", "topk", "stage2", "auto")  # auto: the trainer chooses on the inner validation part
_EPS = 1e-6


def _exporting() -> bool:
    """ONNX export (TorchScript tracing or torch.export) needs shapes that do not depend on the data."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting())


class TinyPatchEncoder(nn.Module):
    """Two conv blocks and average pooling: a patch encoder for tests, with no pretrained weights."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)).mean((2, 3))

    def stages(self) -> list[nn.Module]:
        return [self.block1, self.block2]

    def load_pretrained(self, source: Any, *, trust_pickle: bool = False) -> str:
        raise ConfigError("patch backbone 'tiny' has no pretrained weights; set model.pretrained to null")


class TimmPatchEncoder(nn.Module):
    """A mammolens timm backbone on grey patches: channels repeated, the weights' own normalisation."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        from mammolens.models.backbones import TimmBackbone

        self.backbone = TimmBackbone(arch, in_chans=3, normalize=True)
        self.num_features = self.backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.pool(self.backbone.forward_map(x.expand(-1, 3, -1, -1)))

    def stages(self) -> list[nn.Module]:
        return self.backbone.stages()

    def load_pretrained(self, source: str | Path, *, trust_pickle: bool = False) -> str:
        return self.backbone.load_pretrained(source, trust_pickle=trust_pickle)


def make_encoder(name: str) -> nn.Module:
    if name == "tiny":
        return TinyPatchEncoder()
    if name not in BACKBONES:
        raise ConfigError(f"model.options.backbone: unknown patch backbone {name!r}; known: tiny, {', '.join(BACKBONES)}")
    return TimmPatchEncoder(name)


class PatchFilmModel(MammoModel):
    def __init__(self, num_classes: int, *, backbone: str = "mobilenetv2_100", patch_size: int = 96, stride: int = 48,
                 aggregate: str = "auto", top_k: int = 3, min_tissue: float = 0.3, normal_class: int = 0,
                 patch_batch: int = 64, input_size: int = 0, training: Mapping[str, Any] | None = None) -> None:
        super().__init__({})
        check_window(patch_size, stride)
        if aggregate not in AGGREGATES:
            raise ConfigError(f"model.options.aggregate: {aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"model.options.top_k: must be an integer >= 1, got {top_k!r}")
        if not 0.0 <= float(min_tissue) < 1.0:
            raise ConfigError(f"model.options.min_tissue: must lie in [0, 1), got {min_tissue!r}")
        if num_classes < 2 or not 0 <= normal_class < num_classes:
            raise ConfigError(f"model.options.normal_class: {normal_class} is not a class index of {num_classes} classes")
        if isinstance(patch_batch, bool) or not isinstance(patch_batch, int) or patch_batch < 1:
            raise ConfigError(f"model.options.patch_batch: must be an integer >= 1, got {patch_batch!r}")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or (input_size and input_size < 16):
            raise ConfigError(f"model.options.input_size: 0 (as cut) or an integer >= 16, got {input_size!r}")
        self.input_size = input_size
        self.training_cfg = from_dict(PatchTraining, dict(training or {}), "model.options.training")
        self.num_classes, self.patch_size, self.stride = num_classes, patch_size, stride
        self.aggregate, self.top_k, self.min_tissue = aggregate, top_k, float(min_tissue)
        self.normal_class, self.patch_batch = normal_class, patch_batch
        self.encoder = make_encoder(backbone)
        if self.training_cfg.finetune is not None:  # unfreeze: last_<k> beyond the encoder's stages, before any work
            self.training_cfg.finetune.last_stages(len(self.encoder.stages()))
        self.patch_head = nn.Linear(self.encoder.num_features, num_classes)
        self.stage2 = nn.Linear(2 * num_classes, num_classes)
        self.map_layer = nn.Identity()  # the score map passes here: the CAM target layer
        self.pretrained_from: dict[str, str] = {}

    # ------------------------------------------------------------------ patches
    def grid(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """Window starts along rows and columns (see ``geometry.grid_positions``)."""
        return axis_starts(height, self.patch_size, self.stride), axis_starts(width, self.patch_size, self.stride)

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) films -> (B, N, 1, p, p) windows, row-major over the grid."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise DataError(f"a patch-classifier takes (B, 1, H, W) films, got shape {tuple(x.shape)}")
        ys, xs = self.grid(x.shape[2], x.shape[3])
        p = self.patch_size
        return torch.stack([x[:, :, y:y + p, c:c + p] for y in ys for c in xs], dim=1)

    def valid(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., 1, p, p) -> (...) bool: the patch holds at least ``min_tissue`` of breast pixels."""
        return (patches > 0).float().mean((-3, -2, -1)) >= self.min_tissue

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """(n, 1, p, p) patches -> (n, D) encoder features, ``patch_batch`` at a time."""
        if len(patches) == 0:
            return patches.new_zeros((0, self.encoder.num_features))
        return torch.cat([self.encoder(self._sized(patches[i:i + self.patch_batch]).contiguous(memory_format=torch.channels_last))
                          for i in range(0, len(patches), self.patch_batch)])

    def _sized(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches at the encoder's ``input_size`` (ImageNet weights see objects at ~224 px), or as cut."""
        if not self.input_size or self.input_size == patches.shape[-1]:
            return patches
        return F.interpolate(patches, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)

    def map_from_features(self, features: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Features of the valid windows (row-major, film after film) -> (B, C, rows, cols) score map;
        windows without enough breast score as normal tissue. The trainer scores cached features
        through this same function, so its figures are the bundle's."""
        batch, count = valid.shape
        probs = F.one_hot(torch.full((batch, count), self.normal_class, dtype=torch.long, device=valid.device),
                          self.num_classes).to(features.dtype if len(features) else torch.float32)
        if len(features):
            probs = probs.clone()
            probs[valid] = torch.softmax(self.patch_head(features), dim=1).to(probs.dtype)
        return probs.permute(0, 2, 1).reshape(batch, self.num_classes, *grid)

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) films -> (B, C, rows, cols) patch class probabilities: the film's heatmap;
        window (i, j) starts at ``grid(H, W)[0][i], grid(H, W)[1][j]``."""
        patches = self.cut(x)
        valid = self.valid(patches)
        grid = tuple(len(s) for s in self.grid(x.shape[2], x.shape[3]))
        if _exporting():  # a graph of fixed shapes: every window through the encoder, then masked
            count = patches.shape[1]
            features = self.encoder(self._sized(patches.flatten(0, 1)))
            probs = torch.softmax(self.patch_head(features), dim=1).reshape(-1, count, self.num_classes)
            normal = F.one_hot(torch.tensor(self.normal_class), self.num_classes).to(probs.dtype)
            probs = torch.where(valid[..., None], probs, normal)
            return probs.permute(0, 2, 1).reshape(-1, self.num_classes, *grid)
        return self.map_from_features(self.encode(patches[valid]), valid, grid)

    # ------------------------------------------------------------------ film scores
    def summarise(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, rows, cols) -> (B, 2C): per class, the max and the mean of the top_k patch scores."""
        flat = maps.flatten(2)
        k = min(self.top_k, flat.shape[2])
        return torch.cat([flat.amax(2), flat.topk(k, dim=2).values.mean(2)], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.summarise(self.map_layer(self.score_map(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.aggregate == "stage2":
            return self.stage2(features)
        if self.aggregate == "auto":
            raise ConfigError("model.options.aggregate is 'auto': the trainer chooses max, topk or stage2; "
                              "build the model with one of them to score films")
        c = self.num_classes
        scores = features[:, :c] if self.aggregate == "max" else features[:, c:]
        abnormal = torch.cat([scores[:, :self.normal_class], scores[:, self.normal_class + 1:]], dim=1)
        normal = 1.0 - abnormal.amax(1, keepdim=True)
        probs = torch.cat([abnormal[:, :self.normal_class], normal, abnormal[:, self.normal_class:]], dim=1)
        probs = probs.clamp_min(_EPS)
        return torch.log(probs / probs.sum(1, keepdim=True))

    # ------------------------------------------------------------------ the MammoModel contract
    def backbone_blocks(self) -> list[nn.Module]:
        return list(self.encoder.stages())

    def head_modules(self) -> list[nn.Module]:
        return [self.patch_head, self.stage2]

    def cam_target_layers(self) -> dict[str, nn.Module]:
        return {"patches": self.map_layer}

    def load_pretrained(self, pretrained: Any, *, trust_pickle: bool = False) -> None:
        source = pretrained if str(pretrained) == "imagenet" else Path(pretrained)
        name = self.config.get("backbone", "backbone") if self.config else "backbone"
        self.pretrained_from[str(name)] = self.encoder.load_pretrained(source, trust_pickle=trust_pickle)


def _factory(num_classes: int, in_chans: int = 1, backbone: str = "mobilenetv2_100", patch_size: int = 96,
             stride: int = 48, aggregate: str = "auto", top_k: int = 3, min_tissue: float = 0.3,
             normal_class: int = 0, patch_batch: int = 64, input_size: int = 0,
             training: dict[str, Any] | None = None) -> PatchFilmModel:
    """Patch classifier slid over the whole film (Shen et al. 2019); film scores from the patch score map."""
    if in_chans != 1:
        raise ConfigError(f"a patch-classifier takes 1-channel films, got in_chans={in_chans}")
    model = PatchFilmModel(num_classes, backbone=backbone, patch_size=patch_size, stride=stride, aggregate=aggregate,
                           top_k=top_k, min_tissue=min_tissue, normal_class=normal_class, patch_batch=patch_batch,
                           input_size=input_size, training=training)
    model.config = {"backbone": backbone}  # create_model replaces it with the full config
    return model


MODELS.add("patch-classifier", _factory)
