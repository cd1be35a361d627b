"""CAM methods behind one registry: pytorch-grad-cam's Grad-CAM family, occlusion and attention.

pytorch-grad-cam computes the maps; this module adds what it lacks for mammolens:

- one map per target layer, kept (the library averages them) so a fusion model shows each
  backbone's map and a fused one weighted by each branch's contribution to the target score
  (sum of gradient x feature over the branch's slice of the pooled vector, negative -> 0);
- a backward pass that stops at the target layer: parameters are frozen for the call and the
  target layer's output becomes the graph's leaf, so no weight gradients are computed and the
  cost of a Grad-CAM stays close to one forward;
- EigenCAM with a fixed sign: the library's SVD projection has an arbitrary sign, which can
  invert the map; it is turned to agree with the activations' own energy;
- occlusion sensitivity (model-agnostic) and the attention model's own weights.

A method returns maps at the model-input size, each in [0, 1] with 0 = no evidence.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from torch import nn

from mammolens.models.base import MammoModel
from mammolens.models.classifier import BackboneClassifier
from mammolens.train.losses import probabilities
from mammolens.utils.errors import ConfigError
from mammolens.utils.registry import Registry


@dataclass
class CamRequest:
    """One image through one model: what every method needs."""

    model: MammoModel
    x: torch.Tensor  # (1, 1, H, W) normalised model input
    layers: dict[str, nn.Module]  # branch (or layer) name -> target module
    target: int  # class index whose evidence is mapped
    single_logit: bool  # binary head with one logit (evidence for class 1)
    fill: float  # the normalised value of a black pixel (occlusion's patch)
    temperature: float = 1.0


@dataclass
class CamResult:
    maps: dict[str, np.ndarray]  # name -> (H, W) float32 in [0, 1]
    weights: dict[str, float]  # name -> share in the fused map (sums to 1)
    logits: torch.Tensor | None = None  # (1, K) of the unaltered input, when the method ran it anyway

    def fused(self) -> np.ndarray:
        fused = sum(self.weights[name] * m for name, m in self.maps.items())
        return _unit(np.asarray(fused, np.float32))


CAM_METHODS: Registry[Callable[[CamRequest], CamResult]] = Registry("CAM method")

# A CAM call hooks the model and flips its parameters' requires_grad for the call: two calls on
# one model at once would mix their activations, so they take turns. The hooks also record any
# other forward pass through the model meanwhile, which this lock cannot stop: a model that
# serves requests must be explained on a copy of its own (deploy.Predictor does).
_HOOKS_LOCK = threading.Lock()


class ClassTarget:
    """The score whose evidence is mapped: a class logit, or +-logit for a single-logit binary head."""

    def __init__(self, index: int, single_logit: bool) -> None:
        self.index, self.single_logit = index, single_logit

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.single_logit:
            return output[..., 0] if self.index == 1 else -output[..., 0]
        return output[..., self.index]


class _Scored(nn.Module):
    """The model, keeping its first call's pooled features and output (for branch contributions)."""

    def __init__(self, model: MammoModel) -> None:
        super().__init__()
        self.model = model
        self.features: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        output = self.model.forward_head(features)
        if self.features is None:
            self.features, self.output = features, output
        return output


@contextmanager
def _graph_from(model: nn.Module, layers: list[nn.Module]) -> Iterator[None]:
    """Frozen parameters and a fresh graph leaf at each target layer, for the duration of a call."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)

    def leaf(module: nn.Module, args: object, output: object) -> object:
        if isinstance(output, torch.Tensor) and torch.is_grad_enabled():
            return output.detach().requires_grad_(True) + 0  # non-leaf copy: later in-place ops stay legal
        return None

    handles = [layer.register_forward_hook(leaf) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in saved:
            p.requires_grad_(flag)


def _keep_per_layer(cls: type) -> type:
    class PerLayer(cls):  # type: ignore[misc,valid-type]
        grid: tuple[int, int] | None = None  # (cols, rows): keep a patch score grid's maps at grid size

        def aggregate_multi_layers(self, cam_per_target_layer: list[np.ndarray]) -> np.ndarray:
            self.per_layer = [c[:, 0] for c in cam_per_target_layer]
            return super().aggregate_multi_layers(cam_per_target_layer)

        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            return self.grid or super().get_target_width_height(input_tensor)

    PerLayer.__name__ = f"PerLayer{cls.__name__}"
    return PerLayer


class OrientedEigenCAM(EigenCAM):
    """EigenCAM whose first principal component points where the activations are strong.

    Same projection as the library's (centred activations onto their first right singular
    vector), with a thin SVD (the library's full one builds a C x C matrix it never uses).
    """

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        activations = np.nan_to_num(np.asarray(activations, np.float32))
        projections = []
        for a in activations:
            cells = a.reshape(a.shape[0], -1).T  # (h*w, C)
            centred = cells - cells.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            projection = centred @ vt[0]
            energy = cells.sum(axis=1)
            if np.dot(projection - projection.mean(), energy - energy.mean()) < 0:
                projection = -projection
            projections.append(projection.reshape(a.shape[1:]))
        return np.float32(projections)


def branch_weights(model: MammoModel, names: list[str], scored: _Scored, target: ClassTarget) -> dict[str, float]:
    """Each backbone's share of the target score (gradient x feature over its feature slice).

    Only a fusion model with its default, one-per-backbone layers has branches to weigh; any other
    set of layers is averaged equally.
    """
    equal = dict.fromkeys(names, 1.0 / len(names))
    if not (isinstance(model, BackboneClassifier) and names == list(model.backbones)) or len(names) == 1:
        return equal
    features, output = scored.features, scored.output
    if features is None or output is None or not features.requires_grad:
        return equal
    (grad,) = torch.autograd.grad(target(output[0]), features, retain_graph=True)
    share = (grad * features).detach()[0]
    sizes = [model.backbones[n].num_features for n in names]
    contributions = [max(0.0, float(part.sum())) for part in torch.split(share, sizes)]
    total = sum(contributions)
    return equal if total <= 0 else {n: c / total for n, c in zip(names, contributions)}


def _engine(cam_class: type, batch_size: int | None = None) -> Callable[[CamRequest], CamResult]:
    per_layer_class = _keep_per_layer(cam_class)

    def run(request: CamRequest) -> CamResult:
        names, modules = list(request.layers), list(request.layers.values())
        target = ClassTarget(request.target, request.single_logit)
        scored = _Scored(request.model)
        starts = _patch_grid(request)
        with _HOOKS_LOCK, _graph_from(request.model, modules):
            cam = per_layer_class(scored, modules)
            if starts is not None:
                cam.grid = (len(starts[1]), len(starts[0]))
            if batch_size:
                cam.batch_size = batch_size
            try:
                cam(request.x, targets=[target])
                weights = branch_weights(request.model, names, scored, target)
            finally:
                cam.activations_and_grads.release()
        maps = {n: _unit(m[0] if starts is None else _grid_to_pixels(request, m[0], starts))
                for n, m in zip(names, cam.per_layer)}  # fmt: skip
        return CamResult(maps, weights, None if scored.output is None else scored.output.detach())

    return run


def _patch_grid(request: CamRequest) -> tuple[list[int], list[int]] | None:
    """The window starts (rows, cols) when the one target layer is a patch classifier's score grid, whose
    cells are windows at stride steps plus one flush with the far edge: the library's even stretch
    of the grid over the input would misplace them (by up to ~170 px on an original film)."""
    model = request.model
    if not hasattr(model, "map_layer") or list(request.layers.values()) != [model.map_layer]:
        return None
    return model.grid(*request.x.shape[-2:])


def _grid_to_pixels(request: CamRequest, cells: np.ndarray, starts: tuple[list[int], list[int]]) -> np.ndarray:
    """A grid-sized CAM on the input's pixels, each pixel taking its hottest covering window (as ``scoremap``)."""
    from mammolens.patches.geometry import map_to_pixels

    return map_to_pixels(cells, starts, request.model.patch_size, request.x.shape[-2:])


CAM_METHODS.add("gradcam", _engine(GradCAM))
CAM_METHODS.add("gradcam++", _engine(GradCAMPlusPlus))
CAM_METHODS.add("scorecam", _engine(ScoreCAM, batch_size=32))
CAM_METHODS.add("eigencam", _engine(OrientedEigenCAM))


@CAM_METHODS.register("occlusion")
def occlusion(request: CamRequest, patch: float = 0.25, stride: float = 0.125, batch: int = 49) -> CamResult:
    """Slide a black patch (``patch`` x the input side, every ``stride``) and map the drop of the
    target's probability; a pixel's value is the mean drop over the patches that covered it."""
    x = request.x
    _, _, height, width = x.shape
    side = max(1, round(patch * max(height, width)))
    step = max(1, round(stride * max(height, width)))
    tops = _positions(height, side, step)
    lefts = _positions(width, side, step)
    windows = [(t, l) for t in tops for l in lefts]
    model = request.model
    with torch.inference_mode():
        base = _target_probability(model, x, request)
        drops = []
        for i in range(0, len(windows), batch):
            chunk = windows[i : i + batch]
            occluded = x.repeat(len(chunk), 1, 1, 1)
            for j, (t, l) in enumerate(chunk):
                occluded[j, :, t : t + side, l : l + side] = request.fill
            drops.append(base - _target_probability(model, occluded, request))
        drop = torch.cat(drops).cpu().numpy()
    heat = np.zeros((height, width), np.float64)
    count = np.zeros((height, width), np.float64)
    for d, (t, l) in zip(drop, windows):
        heat[t : t + side, l : l + side] += d
        count[t : t + side, l : l + side] += 1
    heat = np.maximum(heat / np.maximum(count, 1), 0.0)
    return CamResult({"occlusion": _unit(heat.astype(np.float32))}, {"occlusion": 1.0})


@CAM_METHODS.register("attention")
def attention(request: CamRequest) -> CamResult:
    """The attention model's own weights (mean over its LSTM steps), upsampled to the input."""
    model = request.model
    if not hasattr(model, "last_attention"):
        raise ConfigError(
            f"method 'attention' needs the attention model; this bundle's model is "
            f"{model.config.get('name', type(model).__name__)!r}"
        )
    with torch.inference_mode():
        logits = model(request.x)
    weights = model.last_attention.mean(dim=1, keepdim=True).float()  # (1, 1, h, w)
    up = F.interpolate(weights, size=request.x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return CamResult({"attention": _unit(up.cpu().numpy())}, {"attention": 1.0}, logits)


@CAM_METHODS.register("scoremap")
def scoremap(request: CamRequest) -> CamResult:
    """The patch classifier's own map: each window's probability of the target class, a pixel taking
    its hottest covering window (the film score is read from this map, so it is not a post-hoc guess)."""
    from mammolens.patches.geometry import map_to_pixels

    model = request.model
    if not hasattr(model, "score_map"):
        raise ConfigError(
            f"method 'scoremap' needs a patch-classifier; this bundle's model is "
            f"{model.config.get('name', type(model).__name__)!r}"
        )
    _, _, height, width = request.x.shape
    with torch.inference_mode():
        maps = model.map_layer(model.score_map(request.x))
        logits = model.forward_head(model.summarise(maps))
    heat = map_to_pixels(maps[0, request.target].float().cpu().numpy(), model.grid(height, width),
                         model.patch_size, (height, width))
    return CamResult({"scoremap": _unit(heat)}, {"scoremap": 1.0}, logits)


def _target_probability(model: nn.Module, x: torch.Tensor, request: CamRequest) -> torch.Tensor:
    return probabilities(model(x) / request.temperature)[:, request.target]


def _positions(length: int, side: int, step: int) -> list[int]:
    last = max(0, length - side)
    positions = list(range(0, last + 1, step))
    return positions if positions[-1] == last else [*positions, last]


def _unit(values: np.ndarray) -> np.ndarray:
    """Finite, non-negative, divided by its maximum (never shifted or flipped); all-zero stays zero."""
    values = np.nan_to_num(np.asarray(values, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    values = np.maximum(values, 0.0)
    peak = float(values.max()) if values.size else 0.0
    return values / peak if peak > 0 else values
