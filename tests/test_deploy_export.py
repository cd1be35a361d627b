"""ONNX export: metadata, dynamic batch, fp32 parity with torch, static int8, the hybrid-lite fix, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from deploy_fixtures import SIZE, bundle_dir, film, source, write_png  # noqa: F401 - fixtures

from mammolens.cli import main
from mammolens.deploy.export import OPSETS, export_onnx

FAST = {"exporter": "torchscript"}  # 10x faster to export; the default (dynamo) is tested once below
from mammolens.deploy.predictor import Predictor
from mammolens.utils.errors import ConfigError


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_fp32_export_carries_the_spec_and_matches_torch(bundle_dir, tmp_path, exporter):
    report = export_onnx(bundle_dir, tmp_path / "m.onnx", exporter=exporter)
    assert report.max_abs_diff <= 1e-4 and report.opset == OPSETS[exporter]
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == OPSETS[exporter]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["mammolens.classes"]) == ["benign", "malignant"]
    assert json.loads(meta["mammolens.threshold"]) == 0.4
    assert json.loads(meta["mammolens.normalisation"]) == {"mean": 0.45, "std": 0.25}
    assert json.loads(meta["mammolens.preprocess"])["steps"][-1] == {"name": "resize", "size": SIZE}
    assert json.loads(meta["mammolens.precision"]) == "fp32"
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch axis


def test_onnxruntime_predictor_matches_torch_on_files(bundle_dir, tmp_path):
    export_onnx(bundle_dir, **FAST)  # default: BUNDLE/model.onnx, where the onnxruntime backend looks
    torch_p, ort_p = Predictor.load(bundle_dir), Predictor.load(bundle_dir, backend="onnxruntime", batch_size=5)
    files = [write_png(tmp_path / f"{i}.png", film(i)) for i in range(7)]
    a = np.array([[p.probabilities[c] for c in ("benign", "malignant")] for p in torch_p.predict_batch(files)])
    b = np.array([[p.probabilities[c] for c in ("benign", "malignant")] for p in ort_p.predict_batch(files)])
    assert np.abs(a - b).max() <= 1e-4
    assert [p.decision for p in torch_p.predict_batch(files)] == [p.decision for p in ort_p.predict_batch(files)]
    assert ort_p.spec == torch_p.spec  # the .onnx file alone knows how to preprocess and decide
    alone = Predictor.load(bundle_dir / "model.onnx", backend="onnxruntime")
    assert alone.predict(files[0]).probabilities == pytest.approx(ort_p.predict(files[0]).probabilities)


def test_static_int8_is_qdq_and_keeps_decisions(bundle_dir, source, tmp_path):
    with pytest.raises(ConfigError, match="--int8 needs --calibration"):
        export_onnx(bundle_dir, tmp_path / "q.onnx", int8=True)
    report = export_onnx(bundle_dir, tmp_path / "q.onnx", int8=True, calibration=source, calibration_samples=8, **FAST)
    assert report.precision == "int8" and report.calibration_images + report.guard_images == 8 and report.guard_images
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ, not dynamic (no DynamicQuantizeLinear)
    assert "DynamicQuantizeLinear" not in ops
    assert report.decision_agreement == 1.0 and report.max_abs_diff < 0.05


@pytest.mark.slow
def test_hybrid_lite_exports_to_int8(source, tmp_path):
    """The hybrid-lite int8 export failed in quant_pre_process on the TorchScript exporter's graph
    (two symbolic batch dims at the Concat) until shape inference merged them."""
    import torch

    from mammolens.bundle.model import save_bundle
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps

    torch.manual_seed(0)
    model = create_model("hybrid-lite", 2, hidden=16).eval()
    bundle = save_bundle(tmp_path / "hl", model, classes=["normal", "abnormal"], task="normal-abnormal",
                         preprocess={"steps": default_steps(64)}, normalisation=None, metrics={}, provenance={},
                         config={})  # fmt: skip
    int8 = export_onnx(bundle, tmp_path / "hl8.onnx", int8=True, calibration=source, calibration_samples=4, **FAST)
    assert int8.precision == "int8" and "QuantizeLinear" in {n.op_type for n in onnx.load(str(int8.path)).graph.node}


def test_cli_export_and_its_errors(bundle_dir, tmp_path, capsys):
    args = ["--exporter", "torchscript", "--out", str(tmp_path / "c.onnx")]
    assert main(["export", str(bundle_dir), "--format", "onnx", *args]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"
    assert main(["export", str(bundle_dir), "--format", "tflite"]) == 2
    assert "unknown export format 'tflite'; known formats: onnx" in capsys.readouterr().err
    assert main(["export", str(bundle_dir), "--exporter", "jit"]) == 2
    assert "unknown exporter 'jit'; known exporters: dynamo, torchscript" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "bundle not found" in capsys.readouterr().err
    assert main(["export", str(bundle_dir), "--int8", "--calibration", "synthetic", "--float-layers", "stem,neck"]) == 2
    assert "unknown float layer group 'neck'; known: stem, depthwise, head" in capsys.readouterr().err
    assert main(["export", str(bundle_dir), "--int8", "--calibration", "synthetic", "--calibration-method", "mse"]) == 2
    assert "unknown calibration 'mse'; known: minmax, percentile, entropy" in capsys.readouterr().err


def test_quant_recipe_keeps_the_named_layers_in_float(bundle_dir, tmp_path):
    from mammolens.deploy.export import QuantRecipe, float_nodes, quantize_onnx

    fp32 = export_onnx(bundle_dir, tmp_path / "m.onnx", **FAST).path
    images = np.random.default_rng(0).random((8, SIZE, SIZE), dtype=np.float32)

    def float_ops(recipe):
        out = tmp_path / f"q-{len(list(tmp_path.iterdir()))}.onnx"
        quantize_onnx(fp32, out, images, recipe)
        graph = onnx.load(str(out)).graph
        dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        activation_zps = {n.input[2] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
        zero_points = {i.name: i.data_type for i in graph.initializer if i.name in activation_zps}
        ops = [n.op_type for n in graph.node if n.op_type in ("Conv", "Gemm") and not set(n.input) & dequantised]
        return ops, zero_points

    ops, zero_points = float_ops(QuantRecipe())
    assert ops == [] and set(zero_points.values()) == {onnx.TensorProto.UINT8}  # all convs and the dense layer int8
    assert float_ops(QuantRecipe(float_layers=("head",)))[0] == ["Gemm"]
    assert float_ops(QuantRecipe(float_layers=("stem",)))[0] == ["Conv"]  # the first conv (no adapter here)
    assert float_ops(QuantRecipe(float_layers=("stem", "head")))[0] == ["Conv", "Gemm"]
    s8 = float_ops(QuantRecipe(activations="s8", calibrate="percentile"))[1]
    assert set(s8.values()) == {onnx.TensorProto.INT8}  # int8 activations
    with pytest.raises(ConfigError, match="unknown float layer group 'neck'; known: stem, depthwise, head"):
        float_nodes(onnx.load(str(fp32)), ["neck"])


def test_export_cli_takes_the_int8_recipe(bundle_dir, source, tmp_path, capsys):
    args = ["export", str(bundle_dir), "--int8", "--calibration", str(source), "--calibration-samples", "4",
            "--exporter", "torchscript", "--out", str(tmp_path / "q.onnx")]  # fmt: skip
    assert main([*args, "--float-layers", "head", "--calibration-method", "percentile"]) == 0
    note = json.loads(capsys.readouterr().out)["notes"][0]
    assert "percentile 99.999 calibration" in note and "float layers: head" in note
    assert main([*args, "--float-layers", "none"]) == 0
    assert "float layers: none" in json.loads(capsys.readouterr().out)["notes"][0]


@pytest.mark.parametrize("trained_adapter", [False, True])
def test_export_folds_a_replicating_adapter_into_the_stem(tmp_path, trained_adapter):
    """A frozen conv adapter leaves the graph (1-channel first conv, as timm's in_chans=1); a trained one stays."""
    import torch

    from mammolens.bundle.model import save_bundle
    from mammolens.deploy.export import float_nodes
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps

    torch.manual_seed(0)
    model = create_model("mobilenetv2_100", 2).eval()
    if trained_adapter:
        with torch.no_grad():
            model.adapter.weight.add_(0.05 * torch.randn_like(model.adapter.weight))
    bundle = save_bundle(tmp_path / "b", model, classes=["normal", "abnormal"], task="normal-abnormal",
                         preprocess={"steps": default_steps(64)}, normalisation={"mean": 0.45, "std": 0.25},
                         metrics={}, provenance={}, config={})  # fmt: skip
    report = export_onnx(bundle, tmp_path / "m.onnx", check_images=4, **FAST)
    assert report.max_abs_diff < 1e-5  # against the unfolded torch model
    graph = onnx.load(str(report.path)).graph
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    convs = [weights[n.input[1]] for n in graph.node if n.op_type == "Conv"]
    assert convs[0] == ((3, 1, 3, 3) if trained_adapter else (32, 1, 3, 3))
    stem = [n for n in graph.node if n.name in float_nodes(onnx.load(str(report.path)), ["stem"])]
    assert [weights[n.input[1]][0] for n in stem] == ([3, 32] if trained_adapter else [32])  # adapter + first conv
