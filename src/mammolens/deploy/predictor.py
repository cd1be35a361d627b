"""The Predictor: a bundle (or its ONNX export) turned into answers for files and arrays.

It reads any format ``mammolens.io.read_image`` reads, preprocesses exactly as the bundle says,
checks its input against the bundle's spec (a lesion model gets an ROI or refuses), loads the
model once and is safe to share across threads: inference is stateless, and only explanations
(which hook the model) are serialised.
"""

from __future__ import annotations

import json
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
    heatmap: np.ndarray | None = field(default=None, repr=False)  # original-sized float32 [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities, "label": self.label, "decision": self.decision,
                "threshold": self.threshold}  # fmt: skip


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
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec = ModelSpec.from_metadata(meta, path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)[:, None]
        return self.session.run(None, {self.input: x})[0]


class Predictor:
    """``Predictor.load(bundle)`` then ``predict(path_or_array, roi=..., heatmap=...)``."""

    def __init__(self, spec: ModelSpec, runner: _Runner, *, backend: str, bundle_path: Path | None,
                 bundle: Any = None, batch_size: int = 16) -> None:  # fmt: skip
        from mammolens.preprocess import Pipeline

        self.spec = spec
        self.backend = backend
        self.bundle_path = bundle_path
        self.batch_size = batch_size
        self.pipeline = Pipeline(spec.preprocess)
        self._run = runner
        self._bundle = bundle
        self._explain_lock = threading.Lock()

    @classmethod
    def load(cls, bundle_path: str | Path, backend: Backend = "torch", *, onnx_path: str | Path | None = None,
             threads: int | None = None, batch_size: int = 16) -> Predictor:  # fmt: skip
        """``bundle_path``: a bundle directory, or for ``onnxruntime`` also an exported ``.onnx`` file
        (default: ``model.onnx`` inside the bundle). ``threads`` caps intra-op threads."""
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        path = Path(bundle_path)
        if backend == "torch":
            if onnx_path is not None:
                raise ConfigError("onnx_path is only for backend='onnxruntime'")
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
        bundle_dir = path if path.is_dir() else None
        return cls(runner.spec, runner, backend=backend, bundle_path=bundle_dir, batch_size=batch_size)

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
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 3:
            raise DataError(f"expected preprocessed images shaped (N, H, W), got shape {batch.shape}")
        parts = [self._run(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.spec.classes)), np.float32)

    def predict(self, source: str | Path | np.ndarray, *, roi: Any = None, laterality: str = "",
                heatmap: bool = False) -> Prediction:  # fmt: skip
        """One image (a file or a 2-D [0, 1] array). ``roi`` is required by lesion models."""
        pixels, file_laterality = self.read(source)
        x = self._preprocess(pixels, file_laterality, roi, laterality, _name(source))
        prediction = self._prediction(self.predict_arrays(x[None])[0])
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
        return [self._prediction(p) for p in self.predict_arrays(np.stack(arrays))]

    def _prediction(self, probs: np.ndarray) -> Prediction:
        label, decision = self.spec.decide(probs)
        return Prediction(
            probabilities={c: float(p) for c, p in zip(self.spec.classes, probs)},
            label=label, decision=decision, threshold=self.spec.threshold,
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


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else "image"

