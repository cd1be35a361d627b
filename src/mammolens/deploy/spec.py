"""What a model accepts and how its output is read, taken from a bundle (or an exported ONNX file).

The same ``ModelSpec`` drives the Predictor, the ONNX metadata, the service's ``/v1/model`` and
the batch CSV columns, so none of them re-specifies the preprocessing, classes or threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.utils.errors import ConfigError, DataError

ROI = tuple[float, float, float]
NO_AGGREGATOR = {"method": "max", "params": None, "level": "film", "threshold": None}
RECORDS = ("fitted_on", "held_out")  # the bundle's sample fingerprints (data.fingerprints): kept out of exports
# The bundle metrics a model card shows (the page reads "held-out <label> AUC"), under what they are:
# figures on data no model was fitted on. A validation part picked the epoch, temperature, threshold (and
# a patch classifier's C and aggregation): its figures are optimistic and not published.
HELD_OUT_METRICS = {
    "test": "test part",
    "pooled_oof": "cross-validation folds (pooled, single fold models)",
    "ensemble_part": "women set aside from every fold (where the operating point was fitted)",
    "held_out": "combiner outputs (nested cross-validation)",
}
# Preprocessing steps that read the finding's circle: a bundle with one of them scores lesions.
ROI_STEPS = ("crop_roi", "multiscale_crop", "lesion_descriptors")
# Provenance keys that are safe to publish: no file paths, which can name a hospital, a study or a woman.
_PUBLIC_PROVENANCE = ("git_commit", "git_dirty", "packages", "created_at", "manifest_hash", "split_file_hash",
                      "preprocess_hash", "manifest_sha256", "split_sha256", "temperature_fit")  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to feed the model and read its output, without the weights."""

    model_id: str  # "<architecture>-<first 12 hex digits of the weights' sha256>"
    architecture: str
    classes: list[str]
    task: str
    preprocess: dict[str, Any]
    normalisation: dict[str, float]
    threshold: float
    temperature: float
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # the bundle's validation/test metrics
    version: str = ""  # when the bundle was made (its provenance's created_at)
    channels: int = 1  # model input channels: 1, a multiscale_crop's scales, or 2 (a film and its partner)
    descriptors: list[str] = field(default_factory=list)  # the descriptor head's inputs, in order (lesion_descriptors)
    pairs: dict[str, bool] | None = None  # bilateral bundles: {"fallback": ..., "mirror": ...} as in training
    # views -> breast -> exam (evaluate.exams): the bundle's ``aggregator`` ({"method": max|mean|fitted,
    # "params": fitted JSON or None, "level", "threshold": the breast/exam threshold chosen on validation,
    # or None for the film threshold}); a bundle without one combines by max at the film threshold
    aggregator: dict[str, Any] = field(default_factory=lambda: dict(NO_AGGREGATOR))

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.preprocess.get("steps") or [])

    @property
    def roi_steps(self) -> list[str]:
        """The pipeline's steps that read the finding's circle (crop to it, or measure it)."""
        return [str(step["name"]) for step in self.steps if step.get("name") in ROI_STEPS]

    @property
    def needs_roi(self) -> bool:
        """A lesion model (its pipeline crops to, or measures, the finding) must be told where it is."""
        return bool(self.roi_steps)

    @property
    def input_size(self) -> int | None:
        """Side of the square the pipeline's last resize (or multi-scale crop) produces (None: neither)."""
        sizes = [int(step.get("size", 224)) for step in self.steps if step.get("name") in ("resize", "multiscale_crop")]
        return sizes[-1] if sizes else None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """What one preprocessed image is: (H, W) for one channel, (C, H, W) for several."""
        if self.input_size is None:
            return None
        side = (self.input_size, self.input_size)
        return side if self.channels == 1 or self.pairs is not None else (self.channels, *side)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def threshold_band(self) -> tuple[float, float] | None:
        """The threshold's own uncertainty recorded at training (``evaluate.thresholds.threshold_band``), if any."""
        val = self.metrics.get("val")
        band = val.get("threshold_band") if isinstance(val, dict) else None
        return None if band is None else (float(band[0]), float(band[1]))

    def close_to_threshold(self, probs: np.ndarray) -> bool | None:
        """Whether a binary result lies inside the threshold band (None: no band recorded, or not binary)."""
        band = self.threshold_band
        if band is None or not self.binary:
            return None
        return bool(band[0] <= float(probs[1]) <= band[1])

    def warnings(self) -> list[str]:
        """What the card's reader must know before trusting a result: held-out AUCs that do not clear
        chance (their 95 % interval over women reaches 0.5; without one, the AUC itself is at most 0.5),
        a temperature fit that failed."""
        out = []
        for part, m in self.metrics.items():
            if not (isinstance(m, dict) and isinstance(m.get("auc"), (int, float))):
                continue
            low, high = m.get("auc_ci") or (None, None)
            if low is not None and low <= 0.5:
                out.append(f"held-out {part} AUC {m['auc']:.3f} (95 % CI {low:.3f}\u2013{high:.3f} over women) does not "
                           "clear chance (0.5): the model may not separate the classes on films it was not trained on")  # fmt: skip
            elif low is None and m["auc"] <= 0.5:
                out.append(f"held-out {part} AUC {m['auc']:.3f} does not clear chance (0.5): this model does not "
                           "separate the classes on films it was not trained on")  # fmt: skip
        fit = self.provenance.get("temperature_fit")
        if isinstance(fit, dict) and fit.get("failure"):
            out.append(str(fit["failure"]))
        return out

    def input_spec(self) -> dict[str, Any]:
        return {
            "image": "2-D greyscale, float in [0, 1] (files: any format mammolens.io.read_image reads)",
            "preprocess": self.preprocess,
            "model_input": [self.channels, self.input_size, self.input_size] if self.input_size else None,
            "needs_roi": self.needs_roi,
            "roi": "(x, y, r) in original-image pixels, origin top-left" if self.needs_roi else None,
            "descriptors": self.descriptors,
            "needs_other_film": self.pairs is not None and not self.pairs["fallback"],
            "other_film": "the same woman's other breast, same view (optional when needs_other_film is false)"
            if self.pairs is not None else None,
        }

    def public(self) -> dict[str, Any]:
        """The model card a service publishes: no paths, nothing that could identify anyone, and only
        held-out figures, each labelled with what it was measured on (``HELD_OUT_METRICS``)."""
        card = asdict(self)
        card["provenance"] = {k: v for k, v in self.provenance.items() if k in _PUBLIC_PROVENANCE}
        card["metrics"] = {label: self.metrics[part] for part, label in HELD_OUT_METRICS.items() if part in self.metrics}
        card["input"] = self.input_spec()
        card["threshold_band"] = self.threshold_band
        card["warnings"] = self.warnings()
        return card

    def to_metadata(self) -> dict[str, str]:
        """String key -> string value pairs for ONNX ``metadata_props``."""
        return {f"mammolens.{k}": json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], where: str | Path) -> ModelSpec:
        try:
            values = {k.removeprefix("mammolens."): json.loads(v) for k, v in props.items() if k.startswith("mammolens.")}
            return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})
        except (TypeError, ValueError) as exc:
            raise DataError(f"not a mammolens export (its metadata is incomplete: {exc})", path=where) from None

    @classmethod
    def from_bundle(cls, bundle: Any) -> ModelSpec:
        """The spec of a model bundle, or of an ensemble bundle (``_ensemble_spec``)."""
        if getattr(bundle, "members", None) is not None:
            return _ensemble_spec(bundle)
        from mammolens.data.pairs import bundle_pairing

        manifest = json.loads((Path(bundle.path) / "bundle.json").read_text(encoding="utf-8"))
        channels = int(manifest["model"].get("in_chans", 1))
        head = getattr(bundle, "descriptor_head", None)
        # a film with the same woman's other film (data/pairs.py)
        pairs = bundle_pairing(manifest["model"], bundle.config, bundle.preprocess.get("steps") or [])
        scales = [s for s in bundle.preprocess.get("steps") or [] if s.get("name") == "multiscale_crop"]
        if channels != 1 and pairs is None and not scales:
            # The deployed paths assemble several channels from a multi-scale crop or a film pair only;
            # anything else would silently get other inputs than it was trained on.
            raise ConfigError(f"the bundle reads {channels}-channel inputs that are neither multi-scale crops "
                              "(multiscale_crop) nor film pairs (data.pairs), which the Predictor cannot assemble; "
                              "use Bundle.predict_proba", path=bundle.path)  # fmt: skip
        architecture = str(manifest["model"].get("name", "model"))
        return cls(
            model_id=f"{architecture}-{manifest['weights_sha256'][:12]}",
            architecture=architecture,
            classes=list(bundle.classes),
            task=bundle.task,
            preprocess=dict(bundle.preprocess),
            normalisation=dict(bundle.normalisation),
            threshold=float(bundle.threshold),
            temperature=float(bundle.temperature),
            provenance={k: v for k, v in bundle.provenance.items() if k not in RECORDS},  # ids stay in the bundle
            metrics=dict(bundle.metrics),
            version=str(bundle.provenance.get("created_at", "")),
            channels=channels,
            descriptors=list(head["names"]) if head else [],
            pairs=pairs,
            aggregator=dict(manifest.get("aggregator") or NO_AGGREGATOR),
        )

    def check_onnx(self, where: str | Path) -> None:
        """The ONNX graph takes one (N, 1, H, W) image batch and nothing else: refuse what needs more."""
        if self.descriptors:
            raise ConfigError("the bundle adds lesion descriptors to its logits, which the ONNX graph does not "
                              "take; serve it with the torch backend", path=where)  # fmt: skip
        if self.channels != 1:
            what = "film pairs" if self.pairs is not None else "multi-scale crops"
            raise ConfigError(f"the bundle reads {self.channels}-channel inputs ({what}), which the ONNX export "
                              "does not take yet; serve it with the torch backend", path=where)  # fmt: skip

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> tuple[str, str]:
        """(label, decision) for one probability row: the most probable class, and the class at the
        bundle's threshold (or ``threshold``) on the last (positive) class for a binary task (argmax otherwise)."""
        label = self.classes[int(np.argmax(probs))]
        if not self.binary:
            return label, label
        threshold = self.threshold if threshold is None else threshold
        return label, self.classes[1] if float(probs[1]) >= threshold else self.classes[0]

    @property
    def exam_threshold(self) -> float:
        """Where a breast or exam is called positive: the aggregator's own validation-chosen threshold,
        else the film threshold (with ``max``: a breast is positive when any of its films is)."""
        chosen = self.aggregator.get("threshold")
        return self.threshold if chosen is None else float(chosen)


def _ensemble_spec(ensemble: Any) -> ModelSpec:
    """An ensemble is fed like its members (one shared pipeline and input) and read at its own
    threshold and temperature; its id hashes its manifest, which checksums every member."""
    import hashlib

    from mammolens.evaluate.predict import leaf_bundles

    if ensemble.preprocess is None:
        raise ConfigError("the members of this ensemble preprocess differently, so no single input feeds them; "
                          "score it with `mammolens evaluate`", path=ensemble.path)  # fmt: skip
    leaves = [ModelSpec.from_bundle(leaf) for leaf in leaf_bundles(ensemble)]
    first = leaves[0]
    for leaf in leaves[1:]:
        if (leaf.channels, leaf.descriptors, leaf.pairs) != (first.channels, first.descriptors, first.pairs):
            raise ConfigError("the members of this ensemble read different inputs (channels, descriptors or film "
                              "pairs), so no single input feeds them", path=ensemble.path)  # fmt: skip
    digest = hashlib.sha256((Path(ensemble.path) / "bundle.json").read_bytes()).hexdigest()
    architectures = sorted({leaf.architecture for leaf in leaves})
    return ModelSpec(
        model_id=f"ensemble-{digest[:12]}",
        architecture=f"ensemble of {len(leaves)} ({', '.join(architectures)}; {ensemble.combiner['method']})",
        classes=list(ensemble.classes),
        task=ensemble.task,
        preprocess=dict(ensemble.preprocess),
        normalisation=dict(first.normalisation),  # the first member's; each member normalises its own input
        threshold=float(ensemble.threshold),
        temperature=float(ensemble.temperature),
        provenance={k: v for k, v in ensemble.provenance.items() if k not in RECORDS},
        metrics=dict(ensemble.metrics),
        version=str(ensemble.provenance.get("created_at", "")),
        channels=first.channels,
        descriptors=first.descriptors,
        pairs=first.pairs,
        aggregator=dict(getattr(ensemble, "aggregator", None) or NO_AGGREGATOR),
    )


def check_image(pixels: Any, where: str = "image") -> np.ndarray:
    """A caller's array must be what read_image gives: 2-D, finite, within [0, 1]."""
    array = np.asarray(pixels)
    if array.ndim != 2 or array.size == 0 or min(array.shape) < 2:
        raise DataError(f"{where}: expected a 2-D greyscale image, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise DataError(f"{where}: expected a numeric image, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DataError(f"{where}: contains NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{where}: values must lie within [0, 1] (got {lo:.4g}..{hi:.4g}); scale the image first")
    return array


def check_rois(roi: Any, shape: tuple[int, int], where: str = "roi") -> list[ROI]:
    """One ``(x, y, r)`` or a list of them, finite, r > 0, centre inside the image."""
    if roi is None:
        return []
    items = roi if len(roi) and isinstance(roi[0], (list, tuple, np.ndarray)) else [roi]
    out = []
    for item in items:
        try:
            x, y, r = (float(v) for v in item)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected (x, y, r) in original-image pixels, got {item!r}") from None
        if not all(math.isfinite(v) for v in (x, y, r)) or r <= 0:
            raise ConfigError(f"{where}: (x, y, r) must be finite with r > 0, got {item!r}")
        if not (0 <= x < shape[1] and 0 <= y < shape[0]):
            raise ConfigError(f"{where}: centre ({x:g}, {y:g}) lies outside the {shape[1]}x{shape[0]} image")
        out.append((x, y, r))
    return out
