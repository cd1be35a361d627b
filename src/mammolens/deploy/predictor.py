"""The Predictor: a bundle (or its ONNX export) turned into answers for files and arrays.

It reads any format ``mammolens.io.read_image`` reads, preprocesses exactly as the bundle says,
checks its input against the bundle's spec (a lesion model gets an ROI or refuses), loads the
model once and is safe to share across threads: inference is stateless, and explanations run on a
model copy of their own, one at a time. (pytorch-grad-cam hooks record the activation of every forward
pass through the target layer: on a shared model, a film scored in another thread during a CAM
forward would end up in that CAM, one woman's heatmap built from another's film.)

The guard band (int8 ONNX files exported with ``--fp32-fallback``): int8 moves probabilities by at
most the max |delta p| its export measured on calibration films held out of the quantisation. A film whose int8 probability
lies farther than ``guard_band`` times that from the threshold therefore gets fp32's decision; the
films inside the band are re-scored by the fp32 file. Same decision as fp32 is then guaranteed for
every film whose int8 error stays within the band (the safety factor covers films unlike the
calibration ones), at the cost of an fp32 pass for the films inside it.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from mammolens.deploy.spec import ModelSpec, check_image, check_rois
from mammolens.utils.errors import ConfigError, DataError

Backend = Literal["torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
ONNX_NAME = "model.onnx"  # where `mammolens export` puts the fp32 file inside a bundle by default
INT8_NAME = "model.int8.onnx"  # and the int8 one


@dataclass
class Prediction:
    probabilities: dict[str, float]
    label: str  # the most probable class
    decision: str  # the class at the bundle's threshold (binary tasks; the label otherwise)
    threshold: float
    engine: str = "torch"  # what scored it: torch | onnxruntime-fp32 | onnxruntime-int8 (fp32 when the guard band fell back)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # original-sized float32 [0, 1]
    heatmap_method: str = ""  # the CAM method that made ``heatmap``
    heatmap_target: str = ""  # the class whose evidence ``heatmap`` shows

    def to_dict(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities, "label": self.label, "decision": self.decision,
                "threshold": self.threshold, "engine": self.engine}  # fmt: skip


@dataclass
class ExamPrediction:
    """One exam: each view's prediction, each breast's and the exam's, combined by ``evaluate.exams``
    with the bundle's aggregator (``aggregate``)."""

    exam: Prediction
    breasts: dict[str, Prediction]  # "L" / "R"
    views: list[Prediction]
    aggregate: str

    def to_dict(self) -> dict[str, Any]:
        return {"exam": self.exam.to_dict(), "breasts": {k: v.to_dict() for k, v in self.breasts.items()},
                "views": [v.to_dict() for v in self.views], "aggregate": self.aggregate}


@dataclass(frozen=True)
class Film:
    """An image as read: what the bundle's pipeline starts from."""

    pixels: np.ndarray  # 2-D float32 in [0, 1]
    laterality: str = ""  # 'L', 'R', '' when the file does not say
    pixel_mm: float | None = None  # pixel side from the file (DICOM PixelSpacing), when it has one


@dataclass(frozen=True)
class ModelInput:
    """One preprocessed input, as training fed it: (H, W) or (C, H, W) pixels, plus the descriptor
    vector for a bundle with a descriptor head."""

    pixels: np.ndarray
    descriptors: np.ndarray | None = None


class _Runner(Protocol):
    def __call__(self, batch: np.ndarray, descriptors: np.ndarray | None) -> np.ndarray: ...  # -> (N, C) probabilities


class _TorchRunner:
    """The bundle's model (an ensemble's: every member's) in channels-last memory and inference mode
    (thread-safe: eval-mode forward)."""

    def __init__(self, bundle: Any) -> None:
        import torch

        from mammolens.evaluate.predict import leaf_bundles

        self.bundle = bundle
        for leaf in leaf_bundles(bundle):  # once, before any thread
            leaf.model.eval().to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        # NHWC, inference mode, temperature, test-time augmentation and the descriptor head
        return self.bundle.predict_proba(batch, descriptors=descriptors)


class _OrtRunner:
    """An exported ONNX file (normalisation, temperature and softmax inside); ORT sessions are thread-safe.
    Exports take one-channel images only (``ModelSpec.check_onnx``)."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        self.path = path
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

    def __call__(self, batch: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input: x[:, None] if x.ndim == 3 else x})[0]


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
        self._explainer: Any = None  # the bundle copy that explanations hook; never the scoring model
        self._explain_lock = threading.Lock()

    @classmethod
    def load(cls, bundle_path: str | Path, backend: Backend | None = None, *, onnx_path: str | Path | None = None,
             threads: int | None = None, batch_size: int = 16, guard_band: float | None = None) -> Predictor:  # fmt: skip
        """``bundle_path``: a bundle directory, or for ``onnxruntime`` also an exported ``.onnx`` file
        (in a bundle: ``model.onnx``, else ``model.int8.onnx``; the int8 one first with a guard band).
        ``backend`` None: onnxruntime for an ``.onnx`` file, torch for a bundle. ``threads`` caps intra-op
        threads. ``guard_band`` (int8 files exported with an fp32 fallback): the safety factor on the
        export's calibration max |delta p| within which a film's decision is re-scored in fp32 (see the
        module docstring)."""
        path = Path(bundle_path)
        is_onnx = path.suffix == ".onnx" and not path.is_dir()
        if backend is None:
            backend = "onnxruntime" if is_onnx or onnx_path is not None else "torch"
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        if guard_band is not None and not (math.isfinite(guard_band) and guard_band > 0):
            raise ConfigError(f"guard band: the safety factor must be a number > 0, got {guard_band!r}")
        if backend == "torch":
            if is_onnx:
                raise ConfigError("is an ONNX export: the torch backend runs a bundle folder; use backend onnxruntime "
                                  "(--backend onnxruntime, or leave --backend out)", path=path)  # fmt: skip
            if onnx_path is not None:
                raise ConfigError("onnx_path is only for backend='onnxruntime'")
            if guard_band is not None:
                raise ConfigError("the guard band is for int8 ONNX models (backend='onnxruntime')")
            from mammolens.bundle import load_bundle

            if threads:
                import torch

                torch.set_num_threads(threads)
            bundle = load_bundle(path)  # a model bundle or an ensemble (cv's ensemble/)
            return cls(ModelSpec.from_bundle(bundle), _TorchRunner(bundle), backend=backend, bundle_path=path,
                       bundle=bundle, batch_size=batch_size)  # fmt: skip
        if onnx_path is None:
            onnx_path = path if path.suffix == ".onnx" else _onnx_in(path, int8_first=guard_band is not None)
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ConfigError(f"no ONNX model here; run `mammolens export {path} --format onnx` first", path=onnx_path)
        runner = _OrtRunner(onnx_path, threads)
        guard = _guard_band(runner, onnx_path, guard_band, threads) if guard_band is not None else None
        bundle_dir = path if path.is_dir() else None
        return cls(runner.spec, runner, backend=backend, bundle_path=bundle_dir, batch_size=batch_size,
                   engine=f"onnxruntime-{runner.precision}", guard=guard)  # fmt: skip

    @property
    def model_file(self) -> Path | None:
        """The ONNX file that scores (None: the bundle's torch model)."""
        return getattr(self._run, "path", None)

    # -- input ---------------------------------------------------------------------------------
    def read(self, source: str | Path | np.ndarray | Any) -> Film:
        """A file, a 2-D [0, 1] array, or a ``mammolens.io.Image`` (its laterality and pixel spacing kept)."""
        from mammolens.preprocess.sample import default_loader, read_film

        if isinstance(source, (str, Path)):
            return Film(*read_film(default_loader, str(source)))
        if hasattr(source, "pixels"):
            pixels, laterality, pixel_mm = read_film(lambda _path, _frame: source, "image")
            return Film(check_image(pixels), laterality, pixel_mm)
        return Film(check_image(source))

    def preprocess(self, source: str | Path | np.ndarray, *, roi: Any = None, laterality: str = "",
                   other: str | Path | np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """The array the model sees, built the way training built a sample (``preprocess.sample_from_row``,
        then ``data.pairs.pair_channels`` for a bilateral bundle)."""
        return self.prepare(self.read(source), roi=roi, laterality=laterality, name=_name(source),
                            other=None if other is None else self.read(other)).pixels  # fmt: skip

    def prepare(self, film: Film, *, roi: Any = None, laterality: str = "", name: str = "image",
                other: Film | None = None) -> ModelInput:  # fmt: skip
        """``film`` (with ``other``, the same woman's other film, for a bilateral bundle) -> the model's input."""
        spec = self.spec
        rois = check_rois(roi, film.pixels.shape, where=f"{name}: roi")
        if spec.needs_roi and not rois:
            raise ConfigError(f"{name}: model {spec.model_id} was trained on lesion crops (its pipeline has "
                              f"{', '.join(spec.roi_steps)}); give the lesion's roi=(x, y, r) in original-image pixels")  # fmt: skip
        if laterality.upper() not in ("", "L", "R"):
            raise ConfigError(f"{name}: laterality must be 'L', 'R' or '', got {laterality!r}")
        side = (laterality or film.laterality).upper()
        if spec.pairs is None:
            if other is not None:
                raise ConfigError(f"{name}: model {spec.model_id} scores single films; give no other film")
            return self._model_input(self._run_pipeline(film, rois, side, name), name)
        if other is None and not spec.pairs["fallback"]:
            raise ConfigError(f"{name}: model {spec.model_id} reads a film with the same woman's other film and was "
                              "trained without the fallback for films that have none; give other=(the other film)")  # fmt: skip
        from mammolens.data.pairs import OPPOSITE, pair_channels

        x = self._run_pipeline(film, rois, side, name).pixels
        y = None if other is None else self._run_pipeline(other, [], other.laterality or OPPOSITE.get(side, ""),
                                                           f"{name}: other film").pixels  # fmt: skip
        try:
            return ModelInput(pair_channels(x, y, mirror=spec.pairs["mirror"]))
        except DataError as exc:
            raise DataError(f"{name}: {exc}") from None

    def _run_pipeline(self, film: Film, rois: list[Any], laterality: str, name: str) -> Any:
        from mammolens.preprocess import sample_from_row

        row = {"path": name, "rois": json.dumps([list(r) for r in rois]), "laterality": laterality}
        sample, _ = sample_from_row(row, lambda _path, _frame: film.pixels)
        out = self.pipeline(sample.replace(pixel_mm=film.pixel_mm))
        shape = self.spec.input_shape
        if shape is not None and out.pixels.shape != shape:
            raise DataError(f"{name}: preprocessing gave shape {out.pixels.shape}, the model expects {shape}")
        return out

    def _model_input(self, sample: Any, name: str) -> ModelInput:
        if not self.spec.descriptors:
            return ModelInput(sample.pixels)
        from mammolens.bundle.model import descriptor_vector

        try:
            return ModelInput(sample.pixels, descriptor_vector(self.spec.descriptors, sample.descriptors))
        except DataError as exc:
            raise DataError(f"{name}: {exc}") from None

    # -- inference -----------------------------------------------------------------------------
    def predict_arrays(self, batch: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W) or (N, C, H, W) preprocessed images (and the (N, K) descriptors of a bundle with a
        descriptor head) -> (N, C) probabilities, in batches of ``batch_size``."""
        return self.score_arrays(batch, descriptors)[0]

    def score_arrays(self, batch: np.ndarray, descriptors: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """``predict_arrays`` and, per image, the engine whose probabilities it got (the guard band's fallback
        re-scores the images inside the band)."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim not in (3, 4):
            raise DataError(f"expected preprocessed images shaped (N, H, W) or (N, C, H, W), got shape {batch.shape}")
        step = self.batch_size
        parts = [self._run(batch[i : i + step], None if descriptors is None else descriptors[i : i + step])
                 for i in range(0, len(batch), step)]  # fmt: skip
        probs = np.concatenate(parts) if parts else np.zeros((0, len(self.spec.classes)), np.float32)
        engines = [self.engine] * len(probs)
        if self.guard is not None and len(probs):
            inside = np.flatnonzero(self.guard.inside(probs, self.spec.threshold))
            for i in range(0, len(inside), step):
                rows = inside[i : i + step]
                probs[rows] = self.guard.fallback(batch[rows], None)  # ONNX files take no descriptors
            for row in inside:
                engines[row] = self.guard.engine
        return probs, engines

    def predict_inputs(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        """``prepare``'s outputs -> (N, C) probabilities."""
        return self.score_inputs(inputs)[0]

    def score_inputs(self, inputs: Sequence[ModelInput]) -> tuple[np.ndarray, list[str]]:
        """``predict_inputs`` and, per input, the engine that scored it (as ``score_arrays``)."""
        if not inputs:
            return np.zeros((0, len(self.spec.classes)), np.float32), []
        descriptors = np.stack([i.descriptors for i in inputs]) if self.spec.descriptors else None
        return self.score_arrays(np.stack([i.pixels for i in inputs]), descriptors)

    def predict(self, source: str | Path | np.ndarray | Any, *, roi: Any = None, laterality: str = "",
                other: str | Path | np.ndarray | Any = None, heatmap: bool = False) -> Prediction:  # fmt: skip
        """One image (a file, a 2-D [0, 1] array or a ``mammolens.io.Image``). ``roi`` is required by
        lesion models; ``other`` is the same woman's other film, for bilateral models."""
        film = self.read(source)
        x = self.prepare(film, roi=roi, laterality=laterality, name=_name(source),
                         other=None if other is None else self.read(other))  # fmt: skip
        probs, engines = self.score_inputs([x])
        prediction = self._prediction(probs[0], engines[0])
        if heatmap:
            explained = self._explanation(film, roi=roi, laterality=laterality or film.laterality)
            prediction.heatmap = np.asarray(explained.heatmap, dtype=np.float32)
            prediction.heatmap_method, prediction.heatmap_target = explained.method, explained.target
        return prediction

    def predict_batch(self, sources: Sequence[str | Path | np.ndarray], *, rois: Sequence[Any] | None = None,
                      lateralities: Sequence[str] | None = None, others: Sequence[Any] | None = None) -> list[Prediction]:  # fmt: skip
        """Several images, preprocessed one by one and run through the model in batches."""
        n = len(sources)
        rois = list(rois) if rois is not None else [None] * n
        lateralities = list(lateralities) if lateralities is not None else [""] * n
        others = list(others) if others is not None else [None] * n
        if not len(rois) == len(lateralities) == len(others) == n:
            raise ConfigError(f"{n} images but {len(rois)} rois, {len(lateralities)} lateralities, {len(others)} others")
        inputs = [self.prepare(self.read(s), roi=r, laterality=lat, name=_name(s),
                               other=None if o is None else self.read(o))
                  for s, r, lat, o in zip(sources, rois, lateralities, others)]  # fmt: skip
        probs, engines = self.score_inputs(inputs)
        return [self._prediction(p, e) for p, e in zip(probs, engines)]

    def predict_exam(self, sources: Sequence[str | Path | np.ndarray | Any], *, lateralities: Sequence[str] | None = None,
                     views: Sequence[str] | None = None, method: str | None = None) -> ExamPrediction:  # fmt: skip
        """One screening exam (its views, e.g. L/R x CC/MLO): every view scored, then combined per breast
        and per exam by ``evaluate.exams`` with the bundle's aggregator (``method`` overrides it; ``fitted``
        needs the parameters the bundle stores). A view's side comes from ``lateralities`` or its file
        (DICOM ImageLaterality). A bilateral bundle reads each view with the other breast's same view."""
        import pandas as pd

        from mammolens.evaluate.exams import aggregate

        if self.spec.needs_roi:
            raise ConfigError(f"model {self.spec.model_id} scores lesion crops, not whole films: it cannot score an exam")
        n = len(sources)
        if n == 0:
            raise ConfigError("an exam needs at least one view")
        sides = list(lateralities) if lateralities is not None else [""] * n
        names = list(views) if views is not None else [""] * n
        if not len(sides) == len(names) == n:
            raise ConfigError(f"{n} views but {len(sides)} lateralities and {len(names)} view names")
        films = [self.read(s) for s in sources]
        sides = [(side or film.laterality).upper() for side, film in zip(sides, films)]
        for source, side in zip(sources, sides):
            if side not in ("L", "R"):
                raise DataError(f"{_name(source)}: its laterality is unknown (give lateralities=...); "
                                "an exam is scored breast by breast")
        inputs = [self.prepare(film, laterality=side, name=_name(source), other=self._partner(films, sides, names, i))
                  for i, (source, film, side) in enumerate(zip(sources, films, sides))]  # fmt: skip
        probs, engines = self.score_inputs(inputs)
        table = pd.DataFrame({"exam_id": "exam", "laterality": sides, "view": names,
                              **{f"p_{c}": probs[:, k] for k, c in enumerate(self.spec.classes)}})
        chosen = method or self.spec.aggregator.get("method", "max")
        params = self.spec.aggregator.get("params") if chosen == self.spec.aggregator.get("method") else None
        columns = [f"p_{c}" for c in self.spec.classes]
        breasts = aggregate(table, "breast", chosen, params)
        exam = aggregate(table, "exam", chosen, params)
        engine = engines[0] if len(set(engines)) == 1 else "mixed"
        at = self.spec.exam_threshold
        return ExamPrediction(
            exam=self._prediction(exam[columns].to_numpy()[0], engine, at),
            breasts={row["laterality"]: self._prediction(row[columns].to_numpy(np.float64), engine, at)
                     for _, row in breasts.iterrows()},
            views=[self._prediction(p, e) for p, e in zip(probs, engines)], aggregate=chosen)  # fmt: skip

    def _partner(self, films: list[Film], sides: list[str], names: list[str], i: int) -> Film | None:
        """For a bilateral bundle: the exam's view of the other breast with the same view name (None: none)."""
        if self.spec.pairs is None:
            return None
        for j, (side, name) in enumerate(zip(sides, names)):
            if j != i and side != sides[i] and name.upper() == names[i].upper():
                return films[j]
        return None

    def _prediction(self, probs: np.ndarray, engine: str | None = None, threshold: float | None = None) -> Prediction:
        label, decision = self.spec.decide(probs, threshold)
        return Prediction(
            probabilities={c: float(p) for c, p in zip(self.spec.classes, probs)},
            label=label, decision=decision, threshold=self.spec.threshold if threshold is None else threshold,
            engine=engine or self.engine,
        )  # fmt: skip

    # -- explanations --------------------------------------------------------------------------
    @property
    def explains(self) -> bool:
        """Whether heatmaps are available (see ``heatmap_refusal``)."""
        return self.heatmap_refusal is None

    @property
    def heatmap_refusal(self) -> str | None:
        """Why this Predictor gives no heatmaps, in one line (None: it does)."""
        import mammolens.explain as explain

        if not hasattr(explain, "explain_image"):
            return "explanations are not installed in this mammolens (mammolens.explain.explain_image)"
        if self._bundle is None and self.bundle_path is None:
            return "heatmaps need the bundle directory, not only its ONNX export"
        if self.spec.pairs is not None:
            return "heatmaps of bilateral (film-pair) bundles are not implemented: the shared layers see both films"
        return None

    def explain(self, image: Film | np.ndarray, *, roi: Any = None, laterality: str = "") -> np.ndarray:
        """An original-sized float32 [0, 1] heatmap from ``mammolens.explain`` (the torch model)."""
        return np.asarray(self._explanation(image, roi=roi, laterality=laterality).heatmap, dtype=np.float32)

    def _explanation(self, image: Film | np.ndarray, *, roi: Any = None, laterality: str = "") -> Any:
        """``mammolens.explain``'s Explanation: the map, and the method and class it shows."""
        import mammolens.explain as explain

        refusal = self.heatmap_refusal
        if refusal is not None:
            raise ConfigError(refusal)
        film = image if isinstance(image, Film) else Film(check_image(image))
        with self._explain_lock:  # CAM methods hook the model: one explanation at a time, on its own copy
            if self._explainer is None:
                self._explainer = self._explanation_copy()
            rois = check_rois(roi, film.pixels.shape) or None
            return explain.explain_image(self._explainer, film.pixels, rois=rois, laterality=laterality,
                                         pixel_mm=film.pixel_mm)  # fmt: skip

    def _explanation_copy(self) -> Any:
        """A bundle whose model no scoring request runs through: the CAM hooks see only its own forward."""
        if self._bundle is not None:
            return copy.deepcopy(self._bundle)
        from mammolens.bundle import load_bundle

        return load_bundle(self.bundle_path)


def _onnx_in(folder: Path, *, int8_first: bool) -> Path:
    """The export inside a bundle folder, as `mammolens export` names it (the first of the two there)."""
    names = (INT8_NAME, ONNX_NAME) if int8_first else (ONNX_NAME, INT8_NAME)
    found = [folder / name for name in names if (folder / name).is_file()]
    if not found:
        raise ConfigError(f"no ONNX model here (looked for {' and '.join(names)}); "
                          f"run `mammolens export {folder} --format onnx` first", path=folder)  # fmt: skip
    return found[0]


def _guard_band(int8: _OrtRunner, path: Path, factor: float, threads: int | None) -> GuardBand:
    """The band from the int8 file's metadata: its calibration max |delta p| and its fp32 twin beside it."""
    meta = int8.metadata
    if int8.precision != "int8" or "mammolens.int8.calibration_max_abs_dprob" not in meta:
        raise ConfigError("the guard band needs an int8 export that measured its calibration error "
                          "(`mammolens export --int8 --fp32-fallback`)", path=path)  # fmt: skip
    if "mammolens.int8.guard_max_abs_dprob" not in meta:
        raise ConfigError("this int8 file measured its error only on the films its quantisation was tuned on; "
                          "re-export it (the margin is now measured on calibration films held out of the "
                          "quantisation)", path=path)  # fmt: skip
    if "mammolens.int8.fp32_fallback" not in meta:
        raise ConfigError("the guard band needs the fp32 model to fall back on: re-export with --fp32-fallback",
                          path=path)  # fmt: skip
    fp32 = path.parent / str(json.loads(meta["mammolens.int8.fp32_fallback"]))
    if not fp32.is_file():
        raise ConfigError(f"the guard band's fp32 model {fp32.name} is missing beside the int8 file", path=path)
    fallback = _OrtRunner(fp32, threads)
    if fallback.spec != int8.spec:
        raise ConfigError(f"{fp32.name} is not the fp32 twin of this int8 file (their model specs differ)", path=path)
    margin = factor * float(json.loads(meta["mammolens.int8.guard_max_abs_dprob"]))
    return GuardBand(margin=margin, factor=factor, fallback=fallback)


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else "image"

