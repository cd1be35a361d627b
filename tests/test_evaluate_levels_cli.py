"""`mammolens evaluate --level exam`: exam figures from the films' predictions, and the refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from mammolens.cli import main
from mammolens.data.synthetic import generate
from mammolens.models import create_model
from mammolens.preprocess.pipeline import default_steps
from mammolens.bundle import save_bundle


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    torch.manual_seed(0)
    model = create_model("scratch-cnn", 2, depth=2, width=4, hidden=0, dropout=0.0).eval()
    bundle = save_bundle(root / "bundle", model, classes=["normal", "abnormal"], task="normal-abnormal",
                         preprocess={"steps": default_steps(32)}, normalisation={"mean": 0.45, "std": 0.25},
                         threshold=0.4, temperature=1.0, metrics={}, provenance={}, config={})
    source = generate(root / "films", n_per_class=6, size=64, seed=3)
    return bundle, source, root


def _evaluate(setup, out, *extra):
    bundle, source, root = setup
    return main(["evaluate", str(bundle), str(source), "--out", str(out), "--n-boot", "50", "--workers", "1",
                 "--cache-dir", str(root / "cache"), *extra])


def test_exam_level_figures_equal_the_films_combined_by_hand(setup, tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "eval"
    assert _evaluate(setup, out, "--level", "exam") == 0
    assert "exam level (max;" in capsys.readouterr().out
    films = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    films["p"], films["y"] = films["p_abnormal"].astype(float), films["label_index"].astype(int)
    by_hand = films.groupby("exam_id").agg(p=("p", "max"), y=("y", "max"), n=("p", "size"))
    assert (by_hand["n"] == 2).all()  # a synthetic woman: CC and MLO of one breast
    exams = pd.read_csv(out / "predictions-exam.csv", dtype={"sample_id": str})
    assert sorted(exams["sample_id"]) == sorted(by_hand.index)
    metrics = json.loads((out / "metrics.json").read_text())["levels"]["exam"]
    assert metrics["n_samples"] == len(by_hand) and metrics["threshold_from"] == "the film threshold"
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(by_hand["y"], by_hand["p"]), abs=1e-9)
    assert metrics["at_threshold"]["tp"] == int(((by_hand["p"] >= 0.4) & (by_hand["y"] == 1)).sum())
    report = (out / "report.html").read_text()
    assert "<h2>Exam level</h2>" in report and f"{metrics['auc']['value']:.3f}" in report


@pytest.mark.parametrize("extra, message", [
    (["--level", "woman"], "known: film, breast, exam"),
    (["--level", "exam", "--aggregate", "median"], "known: fitted, max, mean"),
    (["--level", "exam", "--aggregate", "fitted"], "no fitted aggregator"),
])
def test_bad_level_options_are_one_line(setup, tmp_path, capsys, extra, message):
    assert _evaluate(setup, tmp_path / "eval", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "eval").exists()
