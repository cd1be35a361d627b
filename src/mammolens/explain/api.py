"""``explain_image``: one original film in, a heatmap on that film out.

The film goes through the bundle's own preprocessing (recording where every input pixel came
from), through the model and a CAM method, and the map comes back onto the original pixels, so
the predictor, the service and the evaluator all show the same map on the image a radiologist
reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mammolens.bundle.model import Bundle, descriptor_vector
from mammolens.explain.geometry import InputGeometry, preprocess_with_geometry
from mammolens.explain.layers import resolve_layers
from mammolens.explain.methods import CAM_METHODS, CamRequest, _unit
from mammolens.preprocess import Pipeline, Sample
from mammolens.train.losses import probabilities
from mammolens.train.normalisation import normalise
from mammolens.utils.errors import ConfigError, DataError

# Methods that read target layers (occlusion and attention look at the whole model).
LAYER_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam")


@dataclass
class Explanation:
    heatmap: np.ndarray  # (H, W) of the original image, float32 in [0, 1]; the fused map for a hybrid
    method: str
    target: str  # class name whose evidence is shown
    target_index: int
    probabilities: dict[str, float]  # class -> temperature-scaled probability
    decision: str  # the class the bundle's threshold (binary) or argmax (multi-class) picks
    per_backbone: dict[str, np.ndarray] = field(default_factory=dict)  # branch -> original-size map
    branch_weights: dict[str, float] = field(default_factory=dict)  # branch -> share in the fused map
    layers: list[str] = field(default_factory=list)  # the target modules' full names
    input_heatmap: np.ndarray | None = None  # the fused map at the model's input size
    input_image: np.ndarray | None = None  # the preprocessed image the model saw
    geometry: InputGeometry | None = None


def resolve_target(bundle: Bundle, target: int | str | None, probs: np.ndarray | None = None) -> int:
    """Class index to explain: given, by index or name, or the positive class (binary) / top class."""
    classes = bundle.classes
    if target is None:
        return 1 if len(classes) == 2 or probs is None else int(np.argmax(probs))
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in classes:
            raise ConfigError(f"target class {target!r} is not one of this bundle's classes: {', '.join(classes)}")
        return classes.index(target)
    index = int(target)
    if not 0 <= index < len(classes):
        raise ConfigError(
            f"target class index {index} is out of range: this bundle has {len(classes)} classes "
            f"(0..{len(classes) - 1}: {', '.join(classes)})"
        )
    return index


def preprocess_for(bundle: Bundle, image: np.ndarray, rois: Sequence[Sequence[float]] | None, laterality: str,
                   pixel_mm: float | None = None) -> tuple[Sample, InputGeometry]:  # fmt: skip
    """The model's input from one original image (``pixel_mm``: the file's pixel side, when it says),
    with its map back onto the image; a multi-scale crop's map is its first channel's."""
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise DataError(f"expected a 2-D greyscale image, got shape {image.shape}")
    sample = Sample(
        pixels=np.clip(image.astype(np.float32, copy=False), 0.0, 1.0),
        rois=tuple(tuple(float(v) for v in r) for r in (rois or ())),  # type: ignore[misc]
        laterality=(laterality or "").upper(),
        pixel_mm=pixel_mm,
    )
    expected = _input_shape(bundle)
    try:
        out, geometry = preprocess_with_geometry(Pipeline(bundle.preprocess), sample)
    except ValueError as exc:  # a step refusing this image (e.g. too small to resize)
        raise DataError(f"the bundle's preprocessing cannot handle this image: {exc}") from None
    if out.pixels.ndim != len(expected) or (expected[-1] and out.pixels.shape != expected):
        raise DataError(
            f"the bundle's preprocessing turned this {image.shape[1]}x{image.shape[0]} image into "
            f"{out.pixels.shape}, not the model's {expected} input"
        )
    return out, geometry


def explain_image(
    bundle: Bundle,
    image: np.ndarray,
    *,
    rois: Sequence[Sequence[float]] | None = None,
    laterality: str = "",
    method: str = "gradcam",
    layer: str | Sequence[str] | None = None,
    target: int | str | None = None,
    pixel_mm: float | None = None,
) -> Explanation:
    """Explain one ORIGINAL image (2-D float in [0, 1]); ``rois`` ([x, y, r] original pixels) feed a
    lesion bundle's ROI crop; ``layer`` overrides the target layer(s) by module name; ``target`` is
    a class index or name (default: the positive class of a binary task, else the top class);
    ``pixel_mm``: the file's pixel side (DICOM PixelSpacing), for steps that measure in mm."""
    CAM_METHODS.get(method)  # an unknown method fails before any work
    sample, geometry = preprocess_for(bundle, image, rois, laterality, pixel_mm)
    return explain_preprocessed(bundle, sample.pixels, geometry, method=method, layer=layer, target=target,
                                descriptors=sample_descriptors(bundle, sample))  # fmt: skip


def sample_descriptors(bundle: Bundle, sample: Sample) -> np.ndarray | None:
    """The (1, K) descriptor-head input of a preprocessed sample (None: the bundle has no descriptor head)."""
    head = getattr(bundle, "descriptor_head", None)
    if getattr(bundle, "members", None) is not None:  # an ensemble: its members' shared head inputs
        from mammolens.evaluate.predict import leaf_bundles

        head = next((leaf.descriptor_head for leaf in leaf_bundles(bundle) if leaf.descriptor_head), None)
    if not head:
        return None
    return descriptor_vector(head["names"], sample.descriptors)[None]


def explain_preprocessed(
    bundle: Bundle,
    pixels: np.ndarray,
    geometry: InputGeometry,
    *,
    method: str = "gradcam",
    layer: str | Sequence[str] | None = None,
    target: int | str | None = None,
    descriptors: np.ndarray | None = None,
) -> Explanation:
    """``explain_image`` after preprocessing: ``pixels`` is the model-input image ((H, W) or (C, H, W)),
    ``geometry`` its map, ``descriptors`` the (1, K) input of a descriptor head (``sample_descriptors``).
    A descriptor head adds a constant to the logits, so the maps are the image model's; the
    probabilities include it."""
    run = CAM_METHODS.get(method)
    if layer is not None and method not in LAYER_METHODS:
        raise ConfigError(f"method {method!r} reads no layer; --layer applies to {', '.join(LAYER_METHODS)}")
    if getattr(bundle, "members", None) is not None:
        return _explain_ensemble(bundle, pixels, geometry, method=method, layer=layer, target=target,
                                 descriptors=descriptors)  # fmt: skip
    model = bundle.model
    layers = resolve_layers(model, layer)
    # The CAM's own forward gives the probabilities; only a multi-class default target needs them first.
    probs = bundle.predict_proba(pixels[None], descriptors)[0] if target is None and len(bundle.classes) > 2 else None
    index = resolve_target(bundle, target, probs)
    x = bundle.to_input(pixels[None])
    fill = float(normalise(torch.zeros(()), bundle.normalisation))
    result = run(CamRequest(model, x, layers, index, _single_logit(bundle), fill, bundle.temperature))
    if probs is None:
        probs = (
            bundle.predict_proba(pixels[None], descriptors)[0] if result.logits is None or descriptors is not None
            else probabilities(result.logits / bundle.temperature).cpu().numpy()[0]
        )  # fmt: skip
    fused = result.fused()
    names = {id(m): n for n, m in model.named_modules()}
    per_backbone = {n: _to_original(geometry, m) for n, m in result.maps.items()}
    heatmap = next(iter(per_backbone.values())) if len(per_backbone) == 1 else _to_original(geometry, fused)
    return Explanation(
        heatmap=heatmap,
        method=method,
        target=bundle.classes[index],
        target_index=index,
        probabilities={c: float(p) for c, p in zip(bundle.classes, probs)},
        decision=decide(bundle, probs),
        per_backbone=per_backbone,
        branch_weights=result.weights,
        layers=[names.get(id(m), n) for n, m in layers.items()] if method in LAYER_METHODS else [],
        input_heatmap=fused,
        input_image=pixels,
        geometry=geometry,
    )


def _explain_ensemble(ensemble: Any, pixels: np.ndarray, geometry: InputGeometry, *, method: str,
                      layer: str | Sequence[str] | None, target: int | str | None,
                      descriptors: np.ndarray | None) -> Explanation:  # fmt: skip
    """An ensemble's map: the mean of its members' maps of the same class, each member weighing
    equally (a stacker's weights are not read: its members' evidence is shown side by side, in
    ``per_backbone``), beside the ensemble's own probabilities and decision."""
    probs = ensemble.predict_proba(pixels[None], descriptors)[0]
    index = resolve_target(ensemble, target, probs)
    parts = [explain_preprocessed(m, pixels, geometry, method=method, layer=layer, target=index,
                                  descriptors=descriptors) for m in ensemble.members]  # fmt: skip
    heatmap = np.mean([p.heatmap for p in parts], axis=0)
    peak = float(heatmap.max())
    share = 1.0 / len(parts)
    return Explanation(
        heatmap=(heatmap / peak if peak > 0 else heatmap).astype(np.float32),
        method=method,
        target=ensemble.classes[index],
        target_index=index,
        probabilities={c: float(p) for c, p in zip(ensemble.classes, probs)},
        decision=decide(ensemble, probs),
        per_backbone={f"member{i}": p.heatmap for i, p in enumerate(parts)},
        branch_weights={f"member{i}": share for i in range(len(parts))},
        layers=[f"member{i}.{name}" for i, p in enumerate(parts) for name in p.layers],
        input_heatmap=_unit(np.mean([p.input_heatmap for p in parts], axis=0)),
        input_image=pixels,
        geometry=geometry,
    )


def decide(bundle: Bundle, probs: np.ndarray) -> str:
    if len(bundle.classes) == 2:
        return bundle.classes[int(probs[1] >= bundle.threshold)]
    return bundle.classes[int(np.argmax(probs))]


def _single_logit(bundle: Bundle) -> bool:
    return int(bundle.model.config.get("num_classes", len(bundle.classes))) == 1


def _input_shape(bundle: Bundle) -> tuple[int, ...]:
    """(side, side), or (C, side, side) after a multi-scale crop; side 0 when no step fixes it."""
    members = getattr(bundle, "members", None)
    if members is not None:  # an ensemble: its members share one pipeline (``EnsembleBundle.preprocess``)
        if bundle.preprocess is None:
            raise ConfigError("the members of this ensemble preprocess differently: explain each member",
                              path=bundle.path)  # fmt: skip
        return _input_shape(members[0])
    steps = bundle.preprocess.get("steps", [])
    sizes = [int(s.get("size") or 224) for s in steps if s.get("name") in ("resize", "multiscale_crop")]
    side = sizes[-1] if sizes else 0
    if any(s.get("name") == "multiscale_crop" for s in steps):
        return int(bundle.model.config.get("in_chans", 1)), side, side
    return side, side


def _to_original(geometry: InputGeometry, values: np.ndarray) -> np.ndarray:
    out = np.clip(geometry.warp_to_original(values), 0.0, 1.0)
    return out.astype(np.float32, copy=False)
