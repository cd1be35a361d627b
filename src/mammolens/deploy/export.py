"""Bundle -> ONNX (fp32, or static QDQ int8 calibrated on real preprocessed images).

The graph takes preprocessed images (N, 1, H, W) in [0, 1] with a dynamic batch axis and returns
class probabilities: the bundle's normalisation, temperature and softmax are inside it, and its
``metadata_props`` carry the ModelSpec (preprocessing steps, classes, threshold, normalisation),
so an edge box needs the .onnx file and mammolens' preprocessing, not torch.

Static int8, not dynamic: dynamic int8 quantises activations at run time and measured 12x slower
than fp32 for MobileNetV2 here. Before quantising, onnxruntime's ``quant_pre_process`` runs symbolic
shape inference; for the hybrids it must be told to merge symbolic dims (``auto_merge``): a
TF-"same"-padded backbone (EfficientNet-Lite) computes its Pad from the input shape, so its batch dim
gets a fresh symbol, and the Concat fusing it with the other backbone's features then has two batch
symbols; without merging, inference stops ("Incomplete symbolic shape inference") and a naive
hybrid-lite int8 export fails there.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.atomic import atomic_path
from mammolens.deploy.spec import ModelSpec
from mammolens.errors import ConfigError, DataError

# ONNX opset per exporter. torch.export ("dynamo", the default) folds TF-"same" padding into static
# pads, which ran EfficientNet-Lite0 1.4x faster in ORT than the TorchScript exporter's graph (28.8 vs
# 40.4 ms, interleaved, 1 thread); the TorchScript exporter exports 10x faster (tests use it).
OPSETS = {"dynamo": 18, "torchscript": 17}
EXPORTERS = tuple(OPSETS)
OPSET = OPSETS["dynamo"]
FP32_TOLERANCE = 1e-4  # max |delta probability| accepted between torch and the fp32 export
FORMATS = ("onnx",)
CALIBRATION_SAMPLES = 256  # int8 calibration films by default (all of a small train part, like MIAS's 154)


@dataclass
class ExportReport:
    path: Path
    precision: str  # "fp32" | "int8"
    opset: int
    exporter: str
    size_bytes: int
    parity_images: int  # images the export was compared with torch on
    max_abs_diff: float  # max |delta probability| vs torch over them
    decision_agreement: float  # fraction of those images with the same decision as torch
    calibration_images: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def probability_graph(bundle: Any) -> Any:
    """The bundle's model wrapped to take [0, 1] images and return its temperature-scaled probabilities."""
    import torch

    from mammolens.train.bundle import dihedral_views
    from mammolens.train.losses import probabilities

    class ProbabilityGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = bundle.model.eval()
            self.mean, self.std = bundle.normalisation["mean"], bundle.normalisation["std"]
            self.temperature = bundle.temperature

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = (image - self.mean) / self.std
            views = list(dihedral_views(x, bundle.tta))  # the bundle's test-time augmentation, in the graph
            return sum(probabilities(self.model(v) / self.temperature) for v in views) / len(views)

    return ProbabilityGraph().eval()


def export_onnx(bundle_path: str | Path, out: str | Path | None = None, *, int8: bool = False,
                calibration: str | Path | None = None, calibration_split: str | Path | None = None,
                calibration_samples: int = CALIBRATION_SAMPLES, check_images: int = 32, seed: int = 0,
                exporter: str = "dynamo", recipe: QuantRecipe | None = None) -> ExportReport:  # fmt: skip
    """Write the bundle as ONNX (``out`` defaults to ``model.onnx`` / ``model.int8.onnx`` in the bundle).

    ``int8`` needs ``calibration``: a dataset source (folder or 'synthetic') whose images, preprocessed
    as the bundle says, set the activation ranges; the bundle's own training data is the right choice
    (``calibration_split``: a split file of that source, whose train part alone is then used).
    The export is compared with torch (on the calibration images when given, else random images);
    an fp32 export off by more than FP32_TOLERANCE is refused.
    """
    from mammolens.train.bundle import load_bundle

    if exporter not in OPSETS:
        raise ConfigError(f"unknown exporter {exporter!r}; known exporters: {', '.join(EXPORTERS)}")
    bundle = load_bundle(bundle_path)
    spec = ModelSpec.from_bundle(bundle)
    spec.check_onnx(bundle_path)
    if spec.input_size is None:
        raise ConfigError("the bundle's preprocessing has no resize step: an ONNX export needs a fixed input size")
    if int8 and recipe is not None:
        recipe.check()
    if int8 and calibration is None:
        raise ConfigError("--int8 needs --calibration SOURCE (training images to calibrate activation ranges on)")
    out = Path(out) if out else Path(bundle_path) / ("model.int8.onnx" if int8 else "model.onnx")
    images = calibration_images(spec, calibration, calibration_samples, seed, split=calibration_split) if calibration is not None else None
    check = images[:check_images] if images is not None else _random_images(spec.input_size, check_images, seed)
    with tempfile.TemporaryDirectory(prefix="mammolens-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _torch_export(bundle, spec.input_size, fp32, exporter)
        notes = []
        if int8:
            notes = quantize_onnx(fp32, Path(tmp) / "int8.onnx", images, recipe or DEFAULT_RECIPE)
            fp32 = Path(tmp) / "int8.onnx"
        _stamp(fp32, spec, "int8" if int8 else "fp32", OPSETS[exporter])
        diff, agreement = compare_with_torch(bundle, spec, fp32, check)
        if not int8 and diff > FP32_TOLERANCE:
            raise DataError(f"the fp32 export differs from torch by {diff:.2e} (> {FP32_TOLERANCE:g}); not written",
                            path=out)  # fmt: skip
        with atomic_path(out) as target:
            target.write_bytes(fp32.read_bytes())
    return ExportReport(
        path=out, precision="int8" if int8 else "fp32", opset=OPSETS[exporter], exporter=exporter, size_bytes=out.stat().st_size,
        parity_images=len(check), max_abs_diff=diff, decision_agreement=agreement,
        calibration_images=0 if images is None or not int8 else len(images), notes=notes,
    )  # fmt: skip


def _torch_export(bundle: Any, size: int, path: Path, exporter: str) -> None:
    """One self-contained file with a dynamic batch axis and a fixed H x W."""
    import torch

    graph = probability_graph(bundle)
    dummy = torch.rand(2, 1, size, size)
    names = {"input_names": ["image"], "output_names": ["probabilities"], "opset_version": OPSETS[exporter]}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # deprecation notices and tracer warnings about python ints
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(graph, (dummy,), str(path), dynamic_shapes=({0: batch},), dynamo=True,
                              external_data=False, verbose=False, **names)  # fmt: skip
        else:
            torch.onnx.export(graph, (dummy,), str(path), dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                              dynamo=False, **names)  # fmt: skip


def _stamp(path: Path, spec: ModelSpec, precision: str, opset: int) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    props = {**spec.to_metadata(), "mammolens.precision": f'"{precision}"', "mammolens.opset": str(opset)}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mammolens"
    onnx.save(model, str(path))


@dataclass(frozen=True)
class QuantRecipe:
    """How static int8 is made: calibration method, activation type and which layers stay in float.

    ``float_layers`` names groups kept in float: "stem" (the input adapter and each backbone's first
    conv, which see raw pixels), "depthwise" (grouped convs: one 3x3 filter per channel, where
    per-channel ranges differ most), "head" (every node after the backbones' last convs: pooling,
    the Concat that fuses two backbones' features under one scale, the dense layers). The probability tail
    (Softmax/Sigmoid) is always float: 8 bits on a probability moves decisions.
    """

    calibrate: str = "minmax"  # minmax | percentile | entropy
    activations: str = "u8"  # u8 (asymmetric QUInt8) | s8 (QInt8, symmetric)
    reduce_range: bool = True
    float_layers: tuple[str, ...] = ()
    percentile: float = 99.999

    def check(self) -> None:
        """One ConfigError line for an unknown calibration, activation type or layer group."""
        if self.calibrate not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration {self.calibrate!r}; known: {', '.join(CALIBRATIONS)}")
        if self.activations not in ("u8", "s8"):
            raise ConfigError(f"unknown activation type {self.activations!r}; known: u8, s8")
        unknown = set(self.float_layers) - set(FLOAT_LAYERS)
        if unknown:
            raise ConfigError(f"unknown float layer group {sorted(unknown)[0]!r}; known: {', '.join(FLOAT_LAYERS)}")

    def describe(self) -> str:
        keep = "+".join(self.float_layers) or "none"
        rr = ", reduce_range" if self.reduce_range else ""
        cal = f"percentile {self.percentile:g}" if self.calibrate == "percentile" else self.calibrate
        return f"{cal} calibration, {self.activations} activations{rr}, float layers: {keep}"


CALIBRATIONS = ("minmax", "percentile", "entropy")
FLOAT_LAYERS = ("stem", "depthwise", "head")
# The best of the recipes measured on MIAS films (benchmarks/deploy_int8_agreement.py, RESULTS.md):
# stem, depthwise convs and head in float, min-max ranges from up to CALIBRATION_SAMPLES training films.
DEFAULT_RECIPE = QuantRecipe(float_layers=FLOAT_LAYERS)


def float_nodes(model: Any, layers: Sequence[str]) -> list[str]:
    """Names of the nodes of ``model`` (an onnx ModelProto) in the groups ``layers`` (see QuantRecipe)."""
    unknown = set(layers) - set(FLOAT_LAYERS)
    if unknown:
        raise ConfigError(f"unknown float layer group {sorted(unknown)[0]!r}; known: {', '.join(FLOAT_LAYERS)}")
    nodes = list(model.graph.node)  # ONNX graphs are topologically sorted
    depth: dict[str, int] = {}  # tensor -> most Convs on a path from the graph input to it
    for node in nodes:
        depth.update(dict.fromkeys(node.output, max((depth.get(i, 0) for i in node.input), default=0)
                                   + (node.op_type == "Conv")))  # fmt: skip
    feeds_conv: set[str] = set()  # tensors from which some Conv is reached
    for node in reversed(nodes):
        if node.op_type == "Conv" or any(o in feeds_conv for o in node.output):
            feeds_conv.update(node.input)
    names = []
    for node in nodes:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        conv = node.op_type == "Conv"
        if (("head" in layers and not conv and not any(o in feeds_conv for o in node.output))
                or ("depthwise" in layers and conv and group > 1)
                or ("stem" in layers and conv and max(depth.get(o, 0) for o in node.output) <= 2)):  # fmt: skip
            names.append(node.name)
    return names


def quantize_onnx(fp32: Path, out: Path, images: np.ndarray, recipe: QuantRecipe = DEFAULT_RECIPE) -> list[str]:
    """Static QDQ int8 of the fp32 file ``fp32``, per-channel s8 weights, activations calibrated on ``images``.

    ``reduce_range`` (7-bit weights): x86 CPUs without VNNI (AVX2 only, like this machine's) saturate
    u8 x s8 products in 16 bits. Which recipe keeps MIAS decisions best: benchmarks/deploy_int8_agreement.py.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe.check()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(images[i : i + 8, None] for i in range(0, len(images), 8))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch, dtype=np.float32)}

    prepared = out.with_suffix(".pre.onnx")
    # quant_pre_process leaves temporary files in the working directory: work in the export's own
    with _quiet(), contextlib.chdir(out.parent):
        quant_pre_process(str(fp32), str(prepared), auto_merge=True)  # see the module docstring
    model = onnx.load(str(prepared))
    tail = [n.name for n in model.graph.node if n.op_type in ("Softmax", "Sigmoid")]
    keep = float_nodes(model, recipe.float_layers)
    s8 = recipe.activations == "s8"
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[recipe.calibrate]  # fmt: skip
    extra = {"ActivationSymmetric": s8, "WeightSymmetric": True, "CalibPercentile": recipe.percentile}
    # histogram calibrators write scratch files and print their progress: keep `export`'s stdout its JSON
    with _quiet(), contextlib.chdir(out.parent), contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8 if s8 else QuantType.QUInt8,
            nodes_to_exclude=tail + keep, reduce_range=recipe.reduce_range, calibrate_method=method, extra_options=extra,
        )  # fmt: skip
    return [f"static QDQ int8 ({recipe.describe()}), per-channel weights, calibrated on {len(images)} images; "
            f"float: {len(tail)} tail + {len(keep)} kept nodes"]  # fmt: skip


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantiser logs one warning per node through the root logger; keep the CLI readable."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def calibration_images(spec: ModelSpec, source: str | Path, n: int, seed: int = 0, *,
                       split: str | Path | None = None) -> np.ndarray:
    """Up to ``n`` images of ``source`` (seeded sample of its rows), preprocessed as the bundle says.

    A lesion model calibrates on its lesion crops: one row per located finding.
    """
    from mammolens.data.units import lesion_rows
    from mammolens.datasets import load_experiment_source
    from mammolens.experiment_config import ExperimentConfig
    from mammolens.preprocess import Pipeline, sample_from_row
    from mammolens.preprocess.sample import default_loader

    if n < 1:
        raise ConfigError(f"calibration samples must be >= 1, got {n}")
    cfg = ExperimentConfig()
    cfg.data.source = str(source)
    manifest = load_experiment_source(cfg, progress=False)[0]
    df = (lesion_rows(manifest).manifest if spec.needs_roi else manifest).df
    if split is not None:
        from mammolens.data.splits import load_split

        df = df[df["sample_id"].isin(set(load_split(split).parts["train"]))]
    if spec.needs_roi:
        df = df[df["rois"].fillna("[]").astype(str).str.len() > 2]
    if df.empty:
        raise DataError("has no usable images to calibrate on" + (" (none with an ROI)" if spec.needs_roi else ""),
                        path=source)  # fmt: skip
    rows = df.sample(n=min(n, len(df)), random_state=seed).to_dict("records")
    pipeline = Pipeline(spec.preprocess)
    return np.stack([pipeline(sample_from_row(row, default_loader)[0]).pixels for row in rows]).astype(np.float32)


def _random_images(size: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)


def compare_with_torch(bundle: Any, spec: ModelSpec, onnx_path: Path, images: np.ndarray) -> tuple[float, float]:
    """(max |delta probability|, decision agreement) of the ONNX file against the bundle in torch."""
    from mammolens.deploy.predictor import Predictor, _OrtRunner, _TorchRunner

    ort = Predictor(spec, _OrtRunner(onnx_path, None), backend="onnxruntime", bundle_path=None)
    ref = Predictor(spec, _TorchRunner(bundle), backend="torch", bundle_path=None, bundle=bundle)
    a, b = ort.predict_arrays(images), ref.predict_arrays(images)
    same = [spec.decide(x)[1] == spec.decide(y)[1] for x, y in zip(a, b)]
    return float(np.abs(a - b).max()), float(np.mean(same))
