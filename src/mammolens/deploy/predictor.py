"""The Predictor: a bundle (or its ONNX export) turned into answers for files and arrays.

It reads any format ``mammolens.io.read_image`` reads, preprocesses exactly as the bundle says,
checks its input against the bundle's spec (a lesion model gets an ROI or refuses), loads the
model once and is safe to share across threads: inference is stateless, and only explanations
(which hook the model) are serialised.

The guard band (int8 ONNX files exported with ``--fp32-fallback``): int8 moves probabilities by at
most the max |delta p| its export measured on the calibration films. A film whose int8 probability
lies farther than ``guard_band`` times that from the threshold therefore gets fp32's decision; the
films inside the band are re-scored by the fp32 file. Same decision as fp32 is then guaranteed for
every film whose int8 error stays within the band (the safety factor covers films unlike the
calibration ones), at the cost of an fp32 pass for the films inside it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from mammolens.deploy.spec import ModelSpec, check_image, check_rois
from mammolens.errors import ConfigError, DataError

Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
ONNX_NAME = "model.onnx"  # where `mammolens export` puts the fp32 file inside a bundle by default


@dataclass
class Prediction:
    probabilities: dict[str, float]
    label: str  # the most probable class
    decision: str  # the class at the bundle's threshold (binary tasks; the label otherwise)
    threshold: float
    engine: str = "torch"  # what scored it: torch | onnxruntime-fp32 | onnxruntime-int8 (fp32 when the guard band fell back)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # original-sized float32 [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities, "label": self.label, "decision": self.decision,
                "threshold": self.threshold, "engine": self.engine}  # fmt: skip


class _Runner(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...  # (N, H, W) [0, 1] -> (N, C) probabilities


class _TorchRunner:
    """The bundle's model in channels-last memory and inference mode (thread-safe: eval-mode forward)."""

    def __init__(self, bundle: Any) -> None:
        import torch

        self.bundle = bundle
        self.model = bundle.model.eval().to(memory_format=torch.channels_last)  # once, before any thread

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.bundle.predict_proba(batch)  # NHWC, inference mode, temperature and test-time augmentation


class _OrtRunner:
    """An exported ONNX file (normalisation, temperature and softmax inside); ORT sessions are thread-safe."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
            raise DataError(f"cannot be loaded by onnxruntime: {str(exc).splitlines()[0]}", path=path) from None
        self.input = self.session.get_inputs()[0].name
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.spec = ModelSpec.from_metadata(self.metadata, path)
        self.precision = str(json.loads(self.metadata.get("mammolens.precision", '"fp32"')))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)[:, None]
        return self.session.run(None, {self.input: x})[0]


@dataclass(frozen=True)
class GuardBand:
    """Films whose probability lies within ``margin`` of the decision boundary are re-scored by ``fallback``."""

    margin: float  # safety factor x the export's calibration max |delta p|
    factor: float
    fallback: _Runner  # the fp32 file
    engine: str = "onnxruntime-fp32"

    def inside(self, probs: np.ndarray, threshold: float) -> np.ndarray:
        """Rows that an error of ``margin`` in every probability could move to another decision: binary,
        within ``margin`` of the threshold; otherwise the top two within 2 ``margin`` of each other."""
        if probs.shape[1] == 2:
            return np.abs(probs[:, 1] - threshold) <= self.margin
        top = np.sort(probs, axis=1)
        return top[:, -1] - top[:, -2] <= 2 * self.margin


class Predictor:
    """``Predictor.load(bundle)`` then ``predict(path_or_array, roi=..., heatmap=...)``."""

    def __init__(self, spec: ModelSpec, runner: _Runner, *, backend: str, bundle_path: Path | None,
                 bundle: Any = None, batch_size: int = 16, engine: str = "torch",
                 guard: GuardBand | None = None) -> None:  # fmt: skip
        from mammolens.preprocess import Pipeline

        self.spec = spec
        self.backend = backend
        self.engine = engine
        self.guard = guard
        self.bundle_path = bundle_path
        self.batch_size = batch_size
        self.pipeline = Pipeline(spec.preprocess)
        self._run = runner
        self._bundle = bundle
        self._explain_lock = threading.Lock()

    @classmethod
    def load(cls, bundle_path: str | Path, backend: Backend = "torch", *, onnx_path: str | Path | None = None,
             threads: int | None = None, batch_size: int = 16, guard_band: float | None = None) -> Predictor:  # fmt: skip
        """``bundle_path``: a bundle directory, or for ``onnxruntime`` also an exported ``.onnx`` file
        (default: ``model.onnx`` inside the bundle). ``threads`` caps intra-op threads. ``guard_band``
        (int8 files exported with an fp32 fallback): the safety factor on the export's calibration
        max |delta p| within which a film's decision is re-scored in fp32 (see the module docstring)."""
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        if guard_band is not None and not (math.isfinite(guard_band) and guard_band > 0):
            raise ConfigError(f"guard band: the safety factor must be a number > 0, got {guard_band!r}")
        path = Path(bundle_path)
        if backend == "torch":
            if onnx_path is not None:
                raise ConfigError("onnx_path is only for backend='onnxruntime'")
            if guard_band is not None:
                raise ConfigError("the guard band is for int8 ONNX models (backend='onnxruntime')")
            from mammolens.train.bundle import load_bundle

            if threads:
                import torch

                torch.set_num_threads(threads)
            bundle = load_bundle(path)
            return cls(ModelSpec.from_bundle(bundle), _TorchRunner(bundle), backend=backend, bundle_path=path,
                       bundle=bundle, batch_size=batch_size)  # fmt: skip
        if onnx_path is None:
            onnx_path = path if path.suffix == ".onnx" else path / ONNX_NAME
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ConfigError(
                f"no ONNX model here; run `mammolens export {path} --format onnx` first", path=onnx_path
            )
        runner = _OrtRunner(onnx_path, threads)
        guard = _guard_band(runner, onnx_path, guard_band, threads) if guard_band is not None else None
        bundle_dir = path if path.is_dir() else None
        return cls(runner.spec, runner, backend=backend, bundle_path=bundle_dir, batch_size=batch_size,
                   engine=f"onnxruntime-{runner.precision}", guard=guard)  # fmt: skip

    # -- input ---------------------------------------------------------------------------------
    def read(self, source: str | Path | np.ndarray) -> tuple[np.ndarray, str]:
        """Original pixels (float32 [0, 1]) and the file's laterality ('' for arrays)."""
        if isinstance(source, (str, Path)):
            from mammolens.preprocess.sample import default_loader, read_pixels

            return read_pixels(default_loader, str(source))
        return check_image(source), ""

    def preprocess(self, source: str | Path | np.ndarray, *, roi: Any = None, laterality: str = "") -> np.ndarray:
        """The (H, W) array the model sees, built the way ``preprocess.sample_from_row`` builds a sample."""
        pixels, file_laterality = self.read(source)
        return self._preprocess(pixels, file_laterality, roi, laterality, _name(source))

    def _preprocess(self, pixels: np.ndarray, file_laterality: str, roi: Any, laterality: str, name: str) -> np.ndarray:
        from mammolens.preprocess import sample_from_row

        rois = check_rois(roi, pixels.shape, where=f"{name}: roi")
        if self.spec.needs_roi and not rois:
            raise ConfigError(
                f"{name}: model {self.spec.model_id} was trained on lesion crops (its pipeline has crop_roi); "
                "give the lesion's roi=(x, y, r) in original-image pixels"
            )
        if laterality.upper() not in ("", "L", "R"):
            raise ConfigError(f"{name}: laterality must be 'L', 'R' or '', got {laterality!r}")
        row = {"path": name, "rois": json.dumps([list(r) for r in rois]), "laterality": laterality or file_laterality}
        sample, _ = sample_from_row(row, lambda _path, _frame: pixels)
        out = self.pipeline(sample).pixels
        size = self.spec.input_size
        if size is not None and out.shape != (size, size):
            raise DataError(f"{name}: preprocessing gave shape {out.shape}, the model expects ({size}, {size})")
        return out

    # -- inference -----------------------------------------------------------------------------
    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W) preprocessed images -> (N, C) probabilities, in batches of ``batch_size``."""
        return self.score_arrays(batch)[0]

    def score_arrays(self, batch: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """``predict_arrays`` and, per image, the engine whose probabilities it got (the guard band's fallback
        re-scores the images inside the band)."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 3:
            raise DataError(f"expected preprocessed images shaped (N, H, W), got shape {batch.shape}")
        parts = [self._run(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        probs = np.concatenate(parts) if parts else np.zeros((0, len(self.spec.classes)), np.float32)
        engines = [self.engine] * len(probs)
        if self.guard is not None and len(probs):
            inside = np.flatnonzero(self.guard.inside(probs, self.spec.threshold))
            for i in range(0, len(inside), self.batch_size):
                rows = inside[i : i + self.batch_size]
                probs[rows] = self.guard.fallback(batch[rows])
            for row in inside:
                engines[row] = self.guard.engine
        return probs, engines

    def predict(self, source: str | Path | np.ndarray, *, roi: Any = None, laterality: str = "",
                heatmap: bool = False) -> Prediction:  # fmt: skip
        """One image (a file or a 2-D [0, 1] array). ``roi`` is required by lesion models."""
        pixels, file_laterality = self.read(source)
        x = self._preprocess(pixels, file_laterality, roi, laterality, _name(source))
        probs, engines = self.score_arrays(x[None])
        prediction = self._prediction(probs[0], engines[0])
        if heatmap:
            prediction.heatmap = self.explain(pixels, roi=roi, laterality=laterality or file_laterality)
        return prediction

    def predict_batch(self, sources: Sequence[str | Path | np.ndarray], *, rois: Sequence[Any] | None = None,
                      lateralities: Sequence[str] | None = None) -> list[Prediction]:  # fmt: skip
        """Several images, preprocessed one by one and run through the model in batches."""
        rois = list(rois) if rois is not None else [None] * len(sources)
        lateralities = list(lateralities) if lateralities is not None else [""] * len(sources)
        if not len(rois) == len(lateralities) == len(sources):
            raise ConfigError(f"{len(sources)} images but {len(rois)} rois and {len(lateralities)} lateralities")
        arrays = [self.preprocess(s, roi=r, laterality=lat) for s, r, lat in zip(sources, rois, lateralities)]
        if not arrays:
            return []
        probs, engines = self.score_arrays(np.stack(arrays))
        return [self._prediction(p, e) for p, e in zip(probs, engines)]

    def _prediction(self, probs: np.ndarray, engine: str | None = None) -> Prediction:
        label, decision = self.spec.decide(probs)
        return Prediction(
            probabilities={c: float(p) for c, p in zip(self.spec.classes, probs)},
            label=label, decision=decision, threshold=self.spec.threshold, engine=engine or self.engine,
        )  # fmt: skip

    # -- explanations --------------------------------------------------------------------------
    @property
    def explains(self) -> bool:
        """Whether heatmaps are available (the explain room is installed and the bundle is at hand)."""
        import mammolens.explain as explain

        return hasattr(explain, "explain_image") and (self._bundle is not None or self.bundle_path is not None)

    def explain(self, pixels: np.ndarray, *, roi: Any = None, laterality: str = "") -> np.ndarray:
        """An original-sized float32 [0, 1] heatmap from ``mammolens.explain`` (the torch model)."""
        import mammolens.explain as explain

        if not hasattr(explain, "explain_image"):
            raise ConfigError("explanations are not installed in this mammolens (mammolens.explain.explain_image)")
        with self._explain_lock:  # CAM methods hook the model: one explanation at a time
            if self._bundle is None:
                if self.bundle_path is None:
                    raise ConfigError("heatmaps need the bundle directory, not only its ONNX export")
                from mammolens.train.bundle import load_bundle

                self._bundle = load_bundle(self.bundle_path)
            rois = check_rois(roi, pixels.shape) or None
            result = explain.explain_image(self._bundle, pixels, rois=rois, laterality=laterality)
        return np.asarray(result.heatmap, dtype=np.float32)


def _guard_band(int8: _OrtRunner, path: Path, factor: float, threads: int | None) -> GuardBand:
    """The band from the int8 file's metadata: its calibration max |delta p| and its fp32 twin beside it."""
    meta = int8.metadata
    if int8.precision != "int8" or "mammolens.int8.calibration_max_abs_dprob" not in meta:
        raise ConfigError("the guard band needs an int8 export that measured its calibration error "
                          "(`mammolens export --int8 --fp32-fallback`)", path=path)  # fmt: skip
    if "mammolens.int8.fp32_fallback" not in meta:
        raise ConfigError("the guard band needs the fp32 model to fall back on: re-export with --fp32-fallback",
                          path=path)  # fmt: skip
    fp32 = path.parent / str(json.loads(meta["mammolens.int8.fp32_fallback"]))
    if not fp32.is_file():
        raise ConfigError(f"the guard band's fp32 model {fp32.name} is missing beside the int8 file", path=path)
    fallback = _OrtRunner(fp32, threads)
    if fallback.spec != int8.spec:
        raise ConfigError(f"{fp32.name} is not the fp32 twin of this int8 file (their model specs differ)", path=path)
    margin = factor * float(json.loads(meta["mammolens.int8.calibration_max_abs_dprob"]))
    return GuardBand(margin=margin, factor=factor, fallback=fallback)


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else "image"

