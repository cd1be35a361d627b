"""Bilateral (film-pair) bundles through the deploy verbs: the Predictor takes the other film and
pairs it as training did, `predict --pairs` lists the pairs, and what cannot be done is one line."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from bilateral_fixtures import paired_source
from typer.testing import CliRunner

from mammolens.cli import app, main
from mammolens.deploy.predictor import Predictor
from mammolens.utils.errors import ConfigError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from mammolens.engine.config import load_config
    from mammolens.engine.experiment import run_experiment

    tmp = tmp_path_factory.mktemp("bilateral")
    source = paired_source(tmp / "src", women=14, unpaired=2)
    cfg = {
        "name": "tiny-bilateral",
        "data": {"source": str(source), "task": "normal-abnormal", "pairs": {"enabled": True}},
        "image_size": 32,
        "model": {"name": "bilateral", "options": {"film_model": "scratch-cnn", "film_options": {"depth": 2, "width": 4},
                                                   "hidden": 0, "dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 8, "patience": 0, "progress": False, "transfer": "frozen",
                  "feature_fast_path": True},
        "workers": 1, "cache_dir": str(tmp / "cache"),
    }  # fmt: skip
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    run_experiment(load_config(tmp / "c.yaml"), tmp / "run", progress=False)
    return tmp


def _films(run: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Test-part sample ids, each id's file, and each id's partner id (itself when it has none)."""
    from mammolens.data.manifest import Manifest
    from mammolens.data.pairs import find_partners

    manifest = Manifest.load(run / "run" / "manifest.csv")
    test_ids = json.loads((run / "run" / "split.json").read_text())["parts"]["test"]
    return test_ids, dict(zip(manifest.df["sample_id"], manifest.df["path"])), find_partners(manifest).as_dict()


def test_the_predictor_pairs_a_film_with_its_other_film_as_training_did(run):
    from mammolens.evaluate.metrics import roc_auc

    predictor = Predictor.load(run / "run" / "bundle")
    assert predictor.spec.pairs == {"fallback": True, "mirror": False}  # the pipeline orients every film
    ids, path, partner = _films(run)
    assert any(partner[s] == s for s in partner) and any(partner[s] != s for s in ids)
    got = np.array([predictor.predict(path[s], other=path[partner[s]] if partner[s] != s else None)
                    .probabilities["abnormal"] for s in ids])  # fmt: skip
    summary = json.loads((run / "run" / "summary.json").read_text())
    from mammolens.data.manifest import Manifest

    pathology = Manifest.load(run / "run" / "manifest.csv").df.set_index("sample_id")["pathology"]
    labels = np.array([int(pathology[s] != "normal") for s in ids])
    assert roc_auc(labels, np.stack([1 - got, got], 1)) == pytest.approx(summary["metrics"]["test"]["auc"], abs=1e-6)
    # the partner changes the answer: a paired film scored alone (the fallback) differs
    paired = [i for i, s in enumerate(ids) if partner[s] != s]
    alone = np.array([predictor.predict(path[ids[i]]).probabilities["abnormal"] for i in paired])
    assert np.abs(alone - got[paired]).max() > 1e-4


def test_the_other_film_is_preprocessed_like_the_film_and_mirrored_when_training_did(run):
    from mammolens.preprocess import Pipeline, sample_from_row
    from mammolens.preprocess.sample import default_loader

    predictor = Predictor.load(run / "run" / "bundle")
    ids, path, partner = _films(run)
    film = next(s for s in ids if partner[s] != s)
    alone = [Pipeline(predictor.spec.preprocess)(sample_from_row({"path": path[s]}, default_loader)[0]).pixels
             for s in (film, partner[film])]  # fmt: skip
    x = predictor.preprocess(path[film], other=path[partner[film]])
    np.testing.assert_array_equal(x, np.stack(alone))
    predictor.spec = dataclasses.replace(predictor.spec, pairs={"fallback": True, "mirror": True})
    np.testing.assert_array_equal(predictor.preprocess(path[film], other=path[partner[film]])[1], alone[1][:, ::-1])


def test_what_is_missing_is_one_line(run, tmp_path, capsys):
    bundle_dir = run / "run" / "bundle"
    ids, path, partner = _films(run)
    predictor = Predictor.load(bundle_dir)
    strict = Predictor.load(bundle_dir)
    strict.spec = dataclasses.replace(strict.spec, pairs={"fallback": False, "mirror": False})
    for call, message in [
        (lambda: strict.predict(path[ids[0]]), "without the fallback .*give other="),
        (lambda: predictor.predict(path[ids[0]], heatmap=True), "heatmaps of bilateral .* not implemented"),
        (lambda: Predictor.load(_film_bundle(tmp_path)).predict(path[ids[0]], other=path[ids[1]]), "single films"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"file,other\n{path[ids[0]]},{path[ids[0]]}\n")
    for args, message in [
        ([path[ids[0]]], "give --pairs PAIRS.csv \\(columns file, other; leave other empty"),
        (["--pairs", str(bad)], "bad.csv: line 2: a film is not its own other film"),
        (["--pairs", str(bad), "--rois", str(bad)], "do not go together"),
    ]:
        assert main(["predict", str(bundle_dir), *args, "--out", str(tmp_path / "o.csv"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, (args, err)
    assert main(["explain", str(bundle_dir), path[ids[0]], "--out", str(tmp_path / "explain")]) == 2
    err = capsys.readouterr().err
    assert "explanations of the bilateral model are not implemented" in err and err.count("\n") == 1
    good = tmp_path / "good.csv"
    good.write_text(f"file,other\n{path[ids[0]]},\n")
    assert main(["predict", str(_film_bundle(tmp_path)), "--pairs", str(good), "--out", str(tmp_path / "o.csv")]) == 2
    assert "--pairs: model" in capsys.readouterr().err  # a single-film bundle refuses the pair list


def _film_bundle(tmp_path: Path) -> Path:
    from deploy_fixtures import make_bundle

    return make_bundle(tmp_path / "film")


def test_predict_pairs_lists_each_film_with_its_other_film(run, tmp_path):
    bundle_dir = run / "run" / "bundle"
    ids, path, partner = _films(run)
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "other"])
        writer.writerows([path[s], path[partner[s]] if partner[s] != s else ""] for s in ids)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), "--pairs", str(pairs), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    predictor = Predictor.load(bundle_dir)
    expected = [predictor.predict(path[s], other=path[partner[s]] if partner[s] != s else None).probabilities["abnormal"]
                for s in ids]  # fmt: skip
    assert [r["error"] for r in rows] == [""] * len(ids)
    assert [r["other"] for r in rows] == [str(Path(path[partner[s]]).resolve()) if partner[s] != s else "" for s in ids]
    np.testing.assert_allclose([float(r["p_abnormal"]) for r in rows], expected, atol=1e-6)
    again = CliRunner().invoke(app, ["predict", str(bundle_dir), "--pairs", str(pairs), "--out", str(out), "--no-progress", "--resume"])
    assert f"{len(ids)} already done" in again.output  # resumes by (file, other)


def test_evaluate_pairs_each_film_with_its_other_film_as_the_predictor_does(run, tmp_path):
    import pandas as pd

    bundle_dir = run / "run" / "bundle"
    source = run / "src"
    out = tmp_path / "eval"
    assert main(["evaluate", str(bundle_dir), str(source), "--out", str(out), "--n-boot", "0",
                 "--cache-dir", str(run / "cache"), "--workers", "1"]) == 0  # fmt: skip
    table = pd.read_csv(out / "predictions.csv").set_index("sample_id")
    ids, path, partner = _films(run)
    predictor = Predictor.load(bundle_dir)
    expected = [predictor.predict(path[s], other=path[partner[s]] if partner[s] != s else None).probabilities["abnormal"]
                for s in ids]  # fmt: skip
    # evaluation reads the preprocessing cache, which stores films as 16-bit integers
    np.testing.assert_allclose(table.loc[ids, "p_abnormal"], expected, atol=1e-4)


def test_the_service_takes_the_other_film_as_a_second_upload(run):
    from fastapi.testclient import TestClient

    from mammolens.deploy.service import create_app

    predictor = Predictor.load(run / "run" / "bundle")
    ids, path, partner = _films(run)
    film = next(s for s in ids if partner[s] != s)
    client = TestClient(create_app(predictor))
    card = client.get("/v1/model").json()
    assert card["input"]["model_input"] == [2, 32, 32] and card["input"]["needs_other_film"] is False
    assert card["explanations"] is False
    files = {"file": ("a.png", Path(path[film]).read_bytes()), "other": ("b.png", Path(path[partner[film]]).read_bytes())}
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    expected = predictor.predict(path[film], other=path[partner[film]]).probabilities["abnormal"]
    assert response.json()["probabilities"]["abnormal"] == pytest.approx(expected, abs=1e-6)
    assert response.json()["other_film"] is True and response.json()["engine"] == "torch"
    alone_body = client.post("/v1/predict", files={"file": files["file"]}).json()
    assert alone_body["other_film"] is False
    alone = alone_body["probabilities"]["abnormal"]
    assert alone == pytest.approx(predictor.predict(path[film]).probabilities["abnormal"], abs=1e-6) and alone != expected
    text = client.post("/v1/predict", files={**files, "other": ("b.png", b"not an image at all" * 10)})
    assert text.status_code == 415
    heat = client.post("/v1/predict", files=files, data={"heatmap": "true"})
    assert heat.status_code == 501 and "bilateral" in heat.json()["detail"]
