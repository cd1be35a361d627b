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
import copy
import io
import json
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.deploy.spec import ModelSpec
from mammolens.utils.atomic import atomic_path
from mammolens.utils.errors import ConfigError, DataError

# ONNX opset per exporter. torch.export ("dynamo", the default) folds TF-"same" padding into static
# pads, which ran EfficientNet-Lite0 1.4x faster in ORT than the TorchScript exporter's graph (28.8 vs
# 40.4 ms, interleaved, 1 thread); the TorchScript exporter exports 10x faster (tests use it).
OPSETS = {"dynamo": 18, "torchscript": 17}
EXPORTERS = tuple(OPSETS)
OPSET = OPSETS["dynamo"]
FP32_TOLERANCE = 1e-4  # max |delta probability| accepted between torch and the fp32 export
FORMATS = ("onnx",)
CALIBRATION_SAMPLES = 256  # int8 calibration films by default (all of a small train part, like MIAS's 154)
# Of the calibration films' women, this share is held out of the quantisation (ranges, float-layer search)
# and only measures the int8 error: the guard band's margin must not come from its own tuning data.
GUARD_SHARE = 0.25


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
    calibration_max_abs_dprob: float | None = None  # int8 vs fp32 over the images the quantisation was tuned on
    fallback_path: Path | None = None  # the fp32 twin written with fp32_fallback
    guard_images: int = 0  # calibration films held out of the quantisation
    guard_max_abs_dprob: float | None = None  # int8 vs fp32 over them: the guard band's margin

    def summary(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def probability_graph(bundle: Any) -> Any:
    """The bundle's model wrapped to take [0, 1] images and return its temperature-scaled probabilities.

    A copy of the model, with a pointwise input adapter folded into the first convolutions
    (``fold_input_adapter``: exact, and a 3-channel stem becomes a 1-channel one).
    """
    import torch

    from mammolens.bundle.model import dihedral_views
    from mammolens.models.classifier import BackboneClassifier
    from mammolens.train.losses import probabilities

    if getattr(bundle, "members", None) is not None:
        return _ensemble_graph(bundle)
    model = copy.deepcopy(bundle.model).eval()
    if isinstance(model, BackboneClassifier):
        model.fold_input_adapter()

    class ProbabilityGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.mean, self.std = bundle.normalisation["mean"], bundle.normalisation["std"]
            self.temperature = bundle.temperature

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = (image - self.mean) / self.std
            views = list(dihedral_views(x, bundle.tta))  # the bundle's test-time augmentation, in the graph
            return sum(probabilities(self.model(v) / self.temperature) for v in views) / len(views)

    return ProbabilityGraph().eval()


def _ensemble_graph(ensemble: Any) -> Any:
    """An ensemble bundle's graph: its members' probability graphs, combined as ``combiner_output`` does
    (the mean, or a logistic-regression stacker on the members' probabilities), then its temperature
    (``apply_temperature``: softmax(log p / T)); the SVC stackers are not expressed in the graph."""
    import torch

    method = ensemble.combiner["method"]
    if method not in ("mean", "logreg"):
        raise ConfigError(f"the ONNX export takes mean and logreg ensembles, not a {method!r} stacker; serve it "
                          "with the torch backend", path=ensemble.path)  # fmt: skip
    members = torch.nn.ModuleList(probability_graph(m) for m in ensemble.members)
    n_classes = len(ensemble.classes)

    class EnsembleGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.members = members
            self.temperature = float(ensemble.temperature)
            if method == "logreg":
                self.register_buffer("coef", torch.tensor(ensemble.combiner["coef"], dtype=torch.float32))
                self.register_buffer("intercept", torch.tensor(ensemble.combiner["intercept"], dtype=torch.float32))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            probas = [m(image) for m in self.members]
            if method == "mean":
                p = torch.stack(probas).mean(dim=0)
            else:  # stack_features: p(class 1) of each member (binary), else all its probabilities
                x = torch.stack([q[:, 1] for q in probas], 1) if n_classes == 2 else torch.cat(probas, 1)
                z = x @ self.coef.T + self.intercept
                p = torch.cat([1 - torch.sigmoid(z), torch.sigmoid(z)], 1) if n_classes == 2 else torch.softmax(z, 1)
            if self.temperature == 1.0:
                return p
            return torch.softmax(torch.log(p.clamp_min(1e-12)) / self.temperature, dim=1)

    return EnsembleGraph().eval()


def export_onnx(bundle_path: str | Path, out: str | Path | None = None, *, int8: bool = False,
                calibration: str | Path | None = None, calibration_split: str | Path | None = None,
                calibration_samples: int = CALIBRATION_SAMPLES, check_images: int = 32, seed: int = 0,
                exporter: str = "dynamo", recipe: QuantRecipe | None = None, fp32_fallback: bool = False) -> ExportReport:  # fmt: skip
    """Write the bundle as ONNX (``out`` defaults to ``model.onnx`` / ``model.int8.onnx`` in the bundle).

    ``int8`` needs ``calibration``: a dataset source (folder or 'synthetic') whose images, preprocessed
    as the bundle says, set the activation ranges; the bundle's own training data is the right choice
    (``calibration_split``: a split file of that source, whose train part alone is then used).
    The export is compared with torch (on the calibration images when given, else random images);
    an fp32 export off by more than FP32_TOLERANCE is refused. ``fp32_fallback`` (int8 only) also
    writes the fp32 file beside the int8 one (``fallback_path``) and names it in the int8 metadata,
    for the Predictor's guard band.
    """
    from mammolens.bundle import load_bundle

    if exporter not in OPSETS:
        raise ConfigError(f"unknown exporter {exporter!r}; known exporters: {', '.join(EXPORTERS)}")
    if fp32_fallback and not int8:
        raise ConfigError("--fp32-fallback is for --int8 exports (the fp32 file the guard band re-scores with)")
    bundle = load_bundle(bundle_path)  # a model bundle or an ensemble (cv's ensemble/)
    spec = ModelSpec.from_bundle(bundle)
    spec.check_onnx(bundle_path)
    if spec.input_size is None:
        raise ConfigError("the bundle's preprocessing has no resize step: an ONNX export needs a fixed input size")
    if int8 and recipe is not None:
        recipe.check()
    if int8 and calibration is None:
        raise ConfigError("--int8 needs --calibration SOURCE (training images to calibrate activation ranges on)")
    out = Path(out) if out else Path(bundle_path) / ("model.int8.onnx" if int8 else "model.onnx")
    fallback = fallback_path(out) if fp32_fallback else None
    images = guard = None
    if calibration is not None:
        rows = calibration_rows(spec, calibration, calibration_samples, seed, split=calibration_split)
        if int8:
            check_not_held_out(bundle, rows, calibration)
        tuning, held = split_guard(rows, seed) if int8 else (rows, [])
        images = preprocess_rows(spec, tuning)
        guard = preprocess_rows(spec, held) if held else None
    check = images[:check_images] if images is not None else _random_images(spec.input_size, check_images, seed)
    with tempfile.TemporaryDirectory(prefix="mammolens-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _torch_export(bundle, spec.input_size, fp32, exporter)
        written, notes, extra = fp32, [], {}
        if int8:
            result = quantize_onnx(fp32, Path(tmp) / "int8.onnx", images, recipe or DEFAULT_RECIPE, guard_images=guard)
            written, notes, extra = Path(tmp) / "int8.onnx", result.notes, result.metadata
            if fallback is not None:
                stamp(fp32, spec, "fp32", OPSETS[exporter])
                fp32_diff, _ = compare_with_torch(bundle, spec, fp32, check)
                if fp32_diff > FP32_TOLERANCE:
                    raise DataError(f"the fp32 export differs from torch by {fp32_diff:.2e} (> {FP32_TOLERANCE:g}); "
                                    "not written", path=fallback)  # fmt: skip
                extra["fp32_fallback"] = fallback.name
        stamp(written, spec, "int8" if int8 else "fp32", OPSETS[exporter], extra)
        diff, agreement = compare_with_torch(bundle, spec, written, check)
        if not int8 and diff > FP32_TOLERANCE:
            raise DataError(f"the fp32 export differs from torch by {diff:.2e} (> {FP32_TOLERANCE:g}); not written",
                            path=out)  # fmt: skip
        if fallback is not None:
            with atomic_path(fallback) as target:
                target.write_bytes(fp32.read_bytes())
        with atomic_path(out) as target:
            target.write_bytes(written.read_bytes())
    return ExportReport(
        path=out, precision="int8" if int8 else "fp32", opset=OPSETS[exporter], exporter=exporter, size_bytes=out.stat().st_size,
        parity_images=len(check), max_abs_diff=diff, decision_agreement=agreement,
        calibration_images=0 if images is None or not int8 else len(images), notes=notes,
        calibration_max_abs_dprob=extra.get("calibration_max_abs_dprob"), fallback_path=fallback,
        guard_images=int(extra.get("guard_images", 0)), guard_max_abs_dprob=extra.get("guard_max_abs_dprob"),
    )  # fmt: skip


def fallback_path(int8: Path) -> Path:
    """Where the fp32 twin of an int8 file goes: ``model.int8.onnx`` -> ``model.onnx``, else ``X.fp32.onnx``."""
    name = int8.name
    return int8.with_name(name.removesuffix(".int8.onnx") + ".onnx" if name.endswith(".int8.onnx") else int8.stem + ".fp32.onnx")


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


def stamp(path: Path, spec: ModelSpec, precision: str, opset: int, int8: dict[str, Any] | None = None) -> None:
    """The ModelSpec, precision and opset, and for int8 how it was made (``mammolens.int8.*``, JSON values)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    props = {**spec.to_metadata(), "mammolens.precision": f'"{precision}"', "mammolens.opset": str(opset),
             **{f"mammolens.int8.{k}": json.dumps(v) for k, v in (int8 or {}).items()}}  # fmt: skip
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mammolens"
    onnx.save(model, str(path))


@dataclass(frozen=True)
class QuantRecipe:
    """How static int8 is made: calibration method, activation type and which layers stay in float.

    ``float_layers`` names groups kept in float: "stem" (each backbone's first conv, and the input
    adapter where it was not folded into it, which see raw pixels), "depthwise" (grouped convs: one 3x3 filter per channel, where
    per-channel ranges differ most), "head" (every node after the backbones' last convs: pooling,
    the Concat that fuses two backbones' features under one scale, the dense layers). The probability tail
    (Softmax/Sigmoid) is always float: 8 bits on a probability moves decisions.
    """

    calibrate: str = "minmax"  # minmax | percentile | entropy
    activations: str = "u8"  # u8 (asymmetric QUInt8) | s8 (QInt8, symmetric)
    reduce_range: bool = True
    float_layers: tuple[str, ...] = ()
    percentile: float = 99.999
    float_nodes: tuple[str, ...] = ()  # node names kept in float besides the groups (a search's choice, reapplied)
    float_budget: int = 0  # sensitivity search (deploy/sensitivity.py): node groups it may keep in float; 0: none
    float_target: float = 0.0  # the search stops once the calibration films' max |delta p| is at or below this
    search_films: int = 32  # calibration films each group's sensitivity is measured on
    search_groups: int = 64  # at most this many groups: adjacent convs are merged beyond it

    def check(self) -> None:
        """One ConfigError line for an unknown calibration, activation type or layer group, or a bad search."""
        if self.calibrate not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration {self.calibrate!r}; known: {', '.join(CALIBRATIONS)}")
        if self.activations not in ("u8", "s8"):
            raise ConfigError(f"unknown activation type {self.activations!r}; known: u8, s8")
        unknown = set(self.float_layers) - set(FLOAT_LAYERS)
        if unknown:
            raise ConfigError(f"unknown float layer group {sorted(unknown)[0]!r}; known: {', '.join(FLOAT_LAYERS)}")
        if self.float_budget < 0:
            raise ConfigError(f"float budget must be >= 0 node groups, got {self.float_budget}")
        if not 0.0 <= self.float_target < 1.0:
            raise ConfigError(f"float target must be a probability difference in [0, 1), got {self.float_target:g}")
        if self.float_budget and (self.search_films < 1 or self.search_groups < 1):
            raise ConfigError(f"the sensitivity search needs >= 1 film and group, got {self.search_films} and "
                              f"{self.search_groups}")  # fmt: skip

    def describe(self) -> str:
        keep = "+".join(self.float_layers) or "none"
        rr = ", reduce_range" if self.reduce_range else ""
        cal = f"percentile {self.percentile:g}" if self.calibrate == "percentile" else self.calibrate
        nodes = f" + {len(self.float_nodes)} named nodes" if self.float_nodes else ""
        search = (f", sensitivity search: up to {self.float_budget} groups to max |dp| {self.float_target:g}"
                  if self.float_budget else "")  # fmt: skip
        return f"{cal} calibration, {self.activations} activations{rr}, float layers: {keep}{nodes}{search}"


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
    # the stem is each backbone's first conv: depth 1, or 2 behind an unfolded conv adapter (3 output channels)
    out_channels = {i.name: i.dims[0] for i in model.graph.initializer if len(i.dims) == 4}
    adapter = any(n.op_type == "Conv" and depth[n.output[0]] == 1 and out_channels.get(n.input[1]) == 3 for n in nodes)
    stem_depth = 2 if adapter else 1
    names = []
    for node in nodes:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        conv = node.op_type == "Conv"
        if (("head" in layers and not conv and not any(o in feeds_conv for o in node.output))
                or ("depthwise" in layers and conv and group > 1)
                or ("stem" in layers and conv and max(depth.get(o, 0) for o in node.output) <= stem_depth)):  # fmt: skip
            names.append(node.name)
    return names


@dataclass
class QuantResult:
    notes: list[str]
    metadata: dict[str, Any]  # "mammolens.int8.*" entries for the file's metadata_props (JSON values)
    calibration_max_abs_dprob: float  # max |delta p| of the int8 file vs fp32 over the calibration images
    guard_max_abs_dprob: float | None = None  # the same over the held-out guard images (None: none given)


def quantize_onnx(fp32: Path, out: Path, images: np.ndarray, recipe: QuantRecipe = DEFAULT_RECIPE, *,
                  guard_images: np.ndarray | None = None) -> QuantResult:
    """Static QDQ int8 of the fp32 file ``fp32``, per-channel s8 weights, activations calibrated on ``images``.

    ``reduce_range`` (7-bit weights): x86 CPUs without VNNI (AVX2 only, like this machine's) saturate
    u8 x s8 products in 16 bits. Which recipe keeps MIAS decisions best: benchmarks/deploy_int8_agreement.py.
    Activation ranges are computed once (an onnxruntime calibration cache), so the sensitivity search
    (``recipe.float_budget``) re-quantises without re-calibrating. The int8 file's max |delta p| against
    fp32 on ``images`` is measured and returned, and on ``guard_images`` (films the quantisation never saw),
    whose figure is the margin the Predictor's guard band reads from the metadata.
    """
    import onnx

    from mammolens.deploy.sensitivity import onnx_probabilities, search_float_nodes

    recipe.check()
    prepared = out.with_suffix(".pre.onnx")
    # quant_pre_process leaves temporary files in the working directory: work in the export's own
    with _quiet(), contextlib.chdir(out.parent):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(prepared), auto_merge=True)  # see the module docstring
    model = onnx.load(str(prepared))
    tail = [n.name for n in model.graph.node if n.op_type in ("Softmax", "Sigmoid")]
    keep = float_nodes(model, recipe.float_layers) + list(recipe.float_nodes)
    quantise = Quantiser(prepared, recipe, images)
    quantise(out, tail + keep)
    reference = onnx_probabilities(fp32, images)
    error = float(np.abs(onnx_probabilities(out, images) - reference).max())
    metadata: dict[str, Any] = {"recipe": recipe.describe(), "float_nodes": keep}
    notes = [f"static QDQ int8 ({recipe.describe()}), per-channel weights, calibrated on {len(images)} images; "
             f"float: {len(tail)} tail + {len(keep)} kept nodes"]  # fmt: skip
    if recipe.float_budget and error > recipe.float_target:
        search = search_float_nodes(model, quantise, images, reference, tail + keep, error, recipe)
        if search.chosen:
            quantise(out, tail + keep + search.chosen)
        error = search.max_abs_dprob
        metadata |= {"float_nodes": keep + search.chosen, "search": search.summary()}
        notes.append(search.note())
    metadata |= {"calibration_images": len(images), "calibration_max_abs_dprob": error}
    guard = None
    if guard_images is not None and len(guard_images):
        guard = float(np.abs(onnx_probabilities(out, guard_images) - onnx_probabilities(fp32, guard_images)).max())
        metadata |= {"guard_images": len(guard_images), "guard_max_abs_dprob": guard}
        notes.append(f"max |delta p| vs fp32: {error:.2e} on the {len(images)} calibration images, {guard:.2e} on "
                     f"{len(guard_images)} held out of the quantisation (the guard band's margin)")  # fmt: skip
    prepared.unlink()
    quantise.cache.unlink(missing_ok=True)
    return QuantResult(notes=notes, metadata=metadata, calibration_max_abs_dprob=error, guard_max_abs_dprob=guard)


class Quantiser:
    """``quantise(out, exclude, only=None)``: one static QDQ file of the prepared model with the recipe's
    settings; the first call calibrates on ``images`` and caches the ranges, later calls reuse them."""

    def __init__(self, prepared: Path, recipe: QuantRecipe, images: np.ndarray) -> None:
        self.prepared, self.recipe, self.images = prepared, recipe, images
        self.cache = prepared.with_suffix(".calibration.json")
        self.cache.unlink(missing_ok=True)

    def __call__(self, out: Path, exclude: Sequence[str], only: Sequence[str] | None = None) -> None:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        images = self.images

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(images[i : i + 8, None] for i in range(0, len(images), 8))

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self.batches, None)
                return None if batch is None else {"image": np.ascontiguousarray(batch, dtype=np.float32)}

        recipe = self.recipe
        s8 = recipe.activations == "s8"
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[recipe.calibrate]  # fmt: skip
        extra = {"ActivationSymmetric": s8, "WeightSymmetric": True, "CalibPercentile": recipe.percentile}
        # histogram calibrators write scratch files and print their progress: keep `export`'s stdout its JSON
        with _quiet(), contextlib.chdir(out.parent), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(self.prepared), str(out), None if self.cache.is_file() else Reader(), quant_format=QuantFormat.QDQ,
                per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8 if s8 else QuantType.QUInt8,
                nodes_to_quantize=list(only or []), nodes_to_exclude=list(exclude), reduce_range=recipe.reduce_range,
                calibrate_method=method, extra_options=extra, calibration_cache_path=str(self.cache),
            )  # fmt: skip


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
    return preprocess_rows(spec, calibration_rows(spec, source, n, seed, split=split))


def calibration_rows(spec: ModelSpec, source: str | Path, n: int, seed: int = 0, *,
                     split: str | Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The manifest rows ``calibration_images`` preprocesses (their ``sample_id`` says which films they are)."""
    from mammolens.data.units import lesion_rows
    from mammolens.engine.config import ExperimentConfig
    from mammolens.engine.sources import load_experiment_source

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
    return df.sample(n=min(n, len(df)), random_state=seed).to_dict("records")


def split_guard(rows: list[dict[str, Any]], seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(quantisation rows, guard rows): ``GUARD_SHARE`` of the women (at least one) held out, all their films
    together, so the margin is measured on films and women the ranges and the float-layer search never saw."""
    groups = sorted({str(r["group"]) for r in rows})
    if len(groups) < 2:
        raise DataError(f"int8 calibration needs films of at least 2 women (one is held out to measure the int8 "
                        f"error on); the calibration rows hold {len(groups)}")  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(groups))
    held = {groups[i] for i in order[: max(1, round(GUARD_SHARE * len(groups)))]}
    return [r for r in rows if str(r["group"]) not in held], [r for r in rows if str(r["group"]) in held]


def check_not_held_out(bundle: Any, rows: list[dict[str, Any]], source: str | Path) -> None:
    """Refuse calibration films from the bundle's test part (by film or by woman): the int8 ranges would be
    tuned on the data its figures are measured on. An ensemble's test part is what none of its members saw."""
    from mammolens.data.fingerprints import FITTED_ON, HELD_OUT, overlap
    from mammolens.evaluate.predict import leaf_bundles

    leaves = leaf_bundles(bundle)
    if any(HELD_OUT not in (leaf.provenance or {}) for leaf in leaves):
        return  # made before bundles recorded their parts: nothing to check against
    ids, groups = [r["sample_id"] for r in rows], [r["group"] for r in rows]
    seen_ids, seen_groups = set(), set()
    for leaf in leaves:
        s, g = overlap(leaf.provenance.get(FITTED_ON, {}), ids, groups)
        seen_ids |= s
        seen_groups |= g
    test_ids, test_groups = set(), set()
    for leaf in leaves:
        s, g = overlap(leaf.provenance[HELD_OUT], ids, groups)
        test_ids |= s - seen_ids
        test_groups |= g - seen_groups
    if test_ids or test_groups:
        raise ConfigError(f"the calibration source holds {len(test_ids)} film(s) and {len(test_groups)} woman/women of "
                          "the bundle's test part; calibrate int8 on its training data (--calibration-split SPLIT "
                          "takes the split's train part)", path=source)  # fmt: skip


def preprocess_rows(spec: ModelSpec, rows: list[dict[str, Any]]) -> np.ndarray:
    from mammolens.preprocess import Pipeline, sample_from_row
    from mammolens.preprocess.sample import default_loader

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
