"""int8 sensitivity search and guard band: the search finds a node made sensitive on purpose, the guard band
re-scores in fp32 exactly the films inside its margin, and bad options give one clear line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from deploy_fixtures import SIZE, bundle_dir, film, source, write_png  # noqa: F401 - fixtures
from onnx import TensorProto, helper, numpy_helper

from mammolens.cli import main
from mammolens.deploy.export import QuantRecipe, export_onnx, quantize_onnx
from mammolens.deploy.predictor import Predictor
from mammolens.deploy.sensitivity import onnx_probabilities
from mammolens.utils.errors import ConfigError

FAST = {"exporter": "torchscript"}


@pytest.fixture(scope="module")
def guarded_export(bundle_dir, source, tmp_path_factory):
    out = tmp_path_factory.mktemp("g") / "model.int8.onnx"
    return export_onnx(bundle_dir, out, int8=True, calibration=source, calibration_samples=8, fp32_fallback=True,
                       recipe=QuantRecipe(float_budget=1), **FAST)  # fmt: skip


def sensitive_model(path):
    """image -> Conv A (3x3) -> Relu -> Conv B (1x1) -> Conv C (1x1) -> mean -> softmax. B adds 1000 to a
    channel that C ignores, so the 8-bit range of B's output (which quantising B or C imposes) has a step
    of ~4, while the channels C reads lie in [0, 1]: B and C must stay float, A need not."""
    rng = np.random.default_rng(0)
    w_b, w_c = np.eye(4, dtype=np.float32)[:, :, None, None], rng.normal(size=(2, 4, 1, 1)).astype(np.float32) * 4
    w_c[:, 3] = 0.0
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (rng.normal(size=(4, 1, 3, 3)).astype(np.float32) * 0.3, "wa"), (np.zeros(4, np.float32), "ba"),
        (w_b, "wb"), (np.array([0, 0, 0, 1000], np.float32), "bb"), (w_c, "wc"), (np.zeros(2, np.float32), "bc")]]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["image", "wa", "ba"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="A_relu"),
        helper.make_node("Conv", ["ar", "wb", "bb"], ["b"], name="B"),
        helper.make_node("Conv", ["b", "wc", "bc"], ["c"], name="C"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Softmax", ["f"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "sensitive", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 16, 16])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], inits)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_search_keeps_the_sensitive_nodes_in_float(tmp_path):
    fp32 = sensitive_model(tmp_path / "s.onnx")
    images = np.random.default_rng(1).random((12, 16, 16), dtype=np.float32)
    plain = quantize_onnx(fp32, tmp_path / "plain.onnx", images, QuantRecipe())
    searched = quantize_onnx(fp32, tmp_path / "searched.onnx", images, QuantRecipe(float_budget=3, float_target=0.01))
    chosen = searched.metadata["float_nodes"]
    assert {"B", "C"} <= set(chosen) and "A" not in chosen
    assert plain.calibration_max_abs_dprob > 0.05 and searched.calibration_max_abs_dprob <= 0.01
    search = searched.metadata["search"]
    assert len(search["steps"]) == 2 and search["chosen_groups"] == 2  # B alone is not enough; B and C meet the target
    assert {"B", "C"} == {n for r in search["ranking"][:2] for n in r["nodes"]} - {"pool", "flatten"}
    measured = np.abs(onnx_probabilities(tmp_path / "searched.onnx", images) - onnx_probabilities(fp32, images)).max()
    assert measured == pytest.approx(searched.calibration_max_abs_dprob, abs=1e-6)


def test_export_records_the_search_and_the_calibration_error(guarded_export):
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(guarded_export.path)).metadata_props}
    assert meta["mammolens.precision"] == "int8" and meta["mammolens.int8.fp32_fallback"] == "model.onnx"
    assert meta["mammolens.int8.calibration_max_abs_dprob"] == guarded_export.calibration_max_abs_dprob
    assert meta["mammolens.int8.calibration_images"] + meta["mammolens.int8.guard_images"] == 8
    assert meta["mammolens.int8.guard_max_abs_dprob"] == guarded_export.guard_max_abs_dprob
    search = meta["mammolens.int8.search"]
    assert search["groups"] >= 1 and len(search["steps"]) == 1  # budget 1
    chosen = [n for s in search["steps"][: search["chosen_groups"]] for n in s["nodes"]]
    assert set(chosen) <= set(meta["mammolens.int8.float_nodes"])
    fp32 = onnx.load(str(guarded_export.fallback_path))
    assert guarded_export.fallback_path.name == "model.onnx"
    assert json.loads({p.key: p.value for p in fp32.metadata_props}["mammolens.precision"]) == "fp32"


def test_guard_band_falls_back_exactly_inside_the_margin(guarded_export, tmp_path):
    int8 = Predictor.load(guarded_export.path, backend="onnxruntime")
    fp32 = Predictor.load(guarded_export.fallback_path, backend="onnxruntime")
    files = [write_png(tmp_path / f"{i}.png", film(i)) for i in range(9)]
    images = np.stack([int8.preprocess(f) for f in files])  # the files' own pixels: int8 steps are coarse
    p8, p32 = int8.predict_arrays(images), fp32.predict_arrays(images)
    t = int8.spec.threshold
    distance = np.abs(p8[:, 1] - t)
    # a factor whose band edge lies midway between two films' distances: some in, some out, none on the edge
    d = np.sort(distance)
    factor = float(d[3] + d[4]) / 2 / guarded_export.guard_max_abs_dprob
    guarded = Predictor.load(guarded_export.path, backend="onnxruntime", guard_band=factor)
    probs, engines = guarded.score_arrays(images)
    inside = distance <= guarded.guard.margin
    assert 0 < inside.sum() < len(images)
    assert engines == ["onnxruntime-fp32" if i else "onnxruntime-int8" for i in inside]
    np.testing.assert_array_equal(probs[inside], p32[inside])
    np.testing.assert_array_equal(probs[~inside], p8[~inside])
    batch = guarded.predict_batch(files)
    assert [p.engine for p in batch] == engines and [p.to_dict()["engine"] for p in batch] == engines
    assert [p.decision for p in batch] == [fp32.predict(f).decision if i else int8.predict(f).decision
                                           for f, i in zip(files, inside)]  # fmt: skip
    assert guarded.predict(files[int(np.argmax(inside))]).engine == "onnxruntime-fp32"


def test_guard_band_options_give_one_clear_line(bundle_dir, source, guarded_export, tmp_path, capsys):
    with pytest.raises(ConfigError, match="float budget must be >= 0 node groups, got -1"):
        QuantRecipe(float_budget=-1).check()
    with pytest.raises(ConfigError, match="float target must be a probability difference"):
        QuantRecipe(float_target=1.5).check()
    for factor in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="the safety factor must be a number > 0"):
            Predictor.load(guarded_export.path, backend="onnxruntime", guard_band=factor)
    with pytest.raises(ConfigError, match="the guard band is for int8 ONNX models"):
        Predictor.load(bundle_dir, guard_band=1.0)
    with pytest.raises(ConfigError, match="needs an int8 export"):
        Predictor.load(guarded_export.fallback_path, backend="onnxruntime", guard_band=1.0)
    alone = export_onnx(bundle_dir, tmp_path / "alone.int8.onnx", int8=True, calibration=source, calibration_samples=4, **FAST)
    with pytest.raises(ConfigError, match="needs the fp32 model to fall back on: re-export with --fp32-fallback"):
        Predictor.load(alone.path, backend="onnxruntime", guard_band=1.0)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.int8.onnx").write_bytes(guarded_export.path.read_bytes())  # its fp32 twin left behind
    with pytest.raises(ConfigError, match="the guard band's fp32 model model.onnx is missing beside the int8 file"):
        Predictor.load(lonely / "model.int8.onnx", backend="onnxruntime", guard_band=1.0)

    export = ["export", str(bundle_dir), "--int8", "--calibration", str(source), "--exporter", "torchscript"]
    assert main([*export, "--float-budget", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "float budget must be >= 0 node groups, got -2" in err[0]
    assert main(["export", str(bundle_dir), "--fp32-fallback", "--exporter", "torchscript"]) == 2
    assert "--fp32-fallback is for --int8 exports" in capsys.readouterr().err
    predict = ["predict", str(alone.path), str(write_png(tmp_path / "f.png", film(0))), "--out", str(tmp_path / "r.csv"),
               "--backend", "onnxruntime", "--no-progress"]  # fmt: skip
    assert main([*predict, "--guard-band", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "re-export with --fp32-fallback" in err[0]


def test_cli_exports_searched_int8_with_its_fp32_twin_and_predicts_with_the_band(bundle_dir, source, tmp_path, capsys):
    out = tmp_path / "cli.int8.onnx"
    args = ["export", str(bundle_dir), "--int8", "--calibration", str(source), "--calibration-samples", "6",
            "--exporter", "torchscript", "--out", str(out), "--float-budget", "2", "--fp32-fallback"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fallback_path"] == str(tmp_path / "cli.onnx") and report["calibration_max_abs_dprob"] >= 0
    assert any(n.startswith("sensitivity search:") for n in report["notes"])
    png = write_png(tmp_path / "f.png", film(3))
    assert main(["predict", str(out), str(png), "--out", str(tmp_path / "r.csv"), "--backend", "onnxruntime",
                 "--guard-band", "2", "--no-progress"]) == 0  # fmt: skip
    assert "1 scored" in capsys.readouterr().out


def test_serve_scores_with_the_guard_band_and_says_which_engine(guarded_export, bundle_dir, tmp_path, monkeypatch,
                                                                capsys):  # fmt: skip
    import uvicorn
    from fastapi.testclient import TestClient

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))  # the app `serve` built, not served
    int8 = Predictor.load(guarded_export.path, backend="onnxruntime")
    files = [write_png(tmp_path / f"{i}.png", film(i)) for i in range(9)]
    distance = [abs(int8.predict(f).probabilities["malignant"] - int8.spec.threshold) for f in files]
    factor = float(np.median(distance)) / guarded_export.guard_max_abs_dprob
    serve = ["serve", str(guarded_export.path), "--backend", "onnxruntime"]
    assert main([*serve, "--guard-band", repr(factor)]) == 0
    client = TestClient(served.pop())
    card = client.get("/v1/model").json()
    assert card["engine"] == "onnxruntime-int8" and card["guard_band"] == {
        "factor": factor, "margin": pytest.approx(factor * guarded_export.guard_max_abs_dprob),
        "fallback_engine": "onnxruntime-fp32"}  # fmt: skip
    guarded = Predictor.load(guarded_export.path, backend="onnxruntime", guard_band=factor)
    engines = []
    for f in files:
        body = client.post("/v1/predict", files={"file": ("x.png", f.read_bytes())}).json()
        expected = guarded.predict(f)
        assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
        assert body["engine"] == expected.engine and body["decision"] == expected.decision
        engines.append(body["engine"])
    assert set(engines) == {"onnxruntime-int8", "onnxruntime-fp32"}  # some films inside the band, some outside
    assert main(serve) == 0 and TestClient(served.pop()).get("/v1/model").json()["guard_band"] is None

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.int8.onnx").write_bytes(guarded_export.path.read_bytes())
    for args, message in [
        ([*serve, "--guard-band", "-1"], "the safety factor must be a number > 0, got -1.0"),
        (["serve", str(bundle_dir), "--guard-band", "1"], "the guard band is for int8 ONNX models"),
        (["serve", str(guarded_export.fallback_path), "--backend", "onnxruntime", "--guard-band", "1"],
         "needs an int8 export"),
        (["serve", str(lonely / "model.int8.onnx"), "--backend", "onnxruntime", "--guard-band", "1"],
         "fp32 model model.onnx is missing beside the int8 file"),
    ]:  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    assert not served  # nothing was served


def test_the_guard_margin_is_measured_on_films_held_out_of_the_quantisation(guarded_export, bundle_dir, source,
                                                                           monkeypatch):  # fmt: skip
    """The women whose films set the ranges and chose the float layers are not those the margin is measured on."""
    from mammolens.deploy import export
    from mammolens.deploy.spec import ModelSpec
    from mammolens.bundle import load_model_bundle as load_bundle

    spec = ModelSpec.from_bundle(load_bundle(bundle_dir))
    tuning, guard = export.split_guard(export.calibration_rows(spec, source, 8, 0), 0)
    assert guard and tuning and not {r["group"] for r in guard} & {r["group"] for r in tuning}
    assert guarded_export.guard_images == len(guard) and guarded_export.calibration_images == len(tuning)
    images = export.preprocess_rows(spec, guard)
    measured = np.abs(onnx_probabilities(guarded_export.path, images)
                      - onnx_probabilities(guarded_export.fallback_path, images)).max()
    assert guarded_export.guard_max_abs_dprob == pytest.approx(float(measured), abs=1e-7)
    # the quantiser calibrated on the tuning films only
    seen = []
    real = export.Quantiser.__init__
    monkeypatch.setattr(export.Quantiser, "__init__", lambda self, p, r, imgs: (seen.append(len(imgs)), real(self, p, r, imgs))[1])
    export.export_onnx(bundle_dir, guarded_export.path.parent / "again.onnx", int8=True, calibration=source,
                       calibration_samples=8, **FAST)  # fmt: skip
    assert seen == [len(tuning)]


def test_int8_refuses_calibration_films_from_the_bundles_test_part(source, tmp_path):
    from deploy_fixtures import make_bundle
    from mammolens.data.adapters.base import load_source
    from mammolens.data.fingerprints import HELD_OUT, fitted_on_record
    from mammolens.bundle import load_model_bundle as load_bundle, save_bundle

    manifest = load_source(str(source)).manifest
    b = load_bundle(make_bundle(tmp_path / "plain"))
    test_part = {"test": np.arange(len(manifest))}  # the whole source is this bundle's test part
    save_bundle(tmp_path / "b", b.model, classes=b.classes, task=b.task, preprocess=b.preprocess,
                normalisation=b.normalisation, threshold=b.threshold, temperature=b.temperature, metrics={}, config={},
                provenance={HELD_OUT: fitted_on_record(manifest, test_part, ("test",))})  # fmt: skip
    with pytest.raises(ConfigError, match="the calibration source holds [1-9][0-9]* film.* of the bundle's test part"):
        export_onnx(tmp_path / "b", tmp_path / "q.onnx", int8=True, calibration=source, calibration_samples=8, **FAST)
    assert not (tmp_path / "q.onnx").exists()


def test_an_int8_file_whose_margin_was_not_measured_on_held_out_films_is_refused(guarded_export, tmp_path):
    model = onnx.load(str(guarded_export.path))
    kept = [p for p in model.metadata_props if p.key != "mammolens.int8.guard_max_abs_dprob"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / "model.int8.onnx"
    onnx.save(model, str(old))
    (tmp_path / "model.onnx").write_bytes(guarded_export.fallback_path.read_bytes())
    with pytest.raises(ConfigError, match="measured its error only on the films its quantisation was tuned on"):
        Predictor.load(old, backend="onnxruntime", guard_band=2.0)
