"""Operating points a clinician can read: a failed temperature fit is refused and recorded, and a
threshold sits in the middle of the scores that decide alike, not on a saturated edge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammolens.evaluate.calibration import T_BOUNDS, calibrate_temperature, fit_temperature
from mammolens.evaluate.thresholds import choose_threshold, operating_point


def _inverted(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validation outputs that rank the classes worse than chance (AUC < 0.5)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    s = np.r_[rng.normal(-1, 1, n), rng.normal(1, 1, n)]
    return y, (1 / (1 + np.exp(s))).astype(np.float32)


def test_a_fit_on_its_bound_fails_and_ships_temperature_one():
    y, p = _inverted()
    assert fit_temperature(p, y) == pytest.approx(T_BOUNDS[1], rel=1e-3)  # the optimiser's answer
    fit = calibrate_temperature(p, y)
    assert fit.temperature == 1.0 and fit.fitted == pytest.approx(T_BOUNDS[1], rel=1e-3)
    assert "upper bound" in fit.failure and "T = 1 applied" in fit.failure
    temperature = operating_point(y, p).temperature
    assert temperature == 1.0  # not 20: probabilities keep their spread
    # a separable, under-confident model drives T onto the lower bound: refused the same way
    sharp_y = np.r_[np.zeros(50), np.ones(50)].astype(int)
    flat = np.r_[np.full(50, 0.499), np.full(50, 0.501)]
    low = calibrate_temperature(flat, sharp_y)
    assert low.temperature == 1.0 and "lower bound" in low.failure
    # an ordinary fit is kept
    ok = calibrate_temperature(np.r_[np.linspace(0.1, 0.6, 50), np.linspace(0.4, 0.9, 50)], sharp_y)
    assert ok.failure is None and ok.temperature == ok.fitted


def test_a_saturated_threshold_takes_the_middle_of_the_tied_interval():
    # a sharp temperature saturated the positives' probabilities at exactly 1.0
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.01, 0.02, 0.2, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0])
    t = choose_threshold(y, p)
    assert t == pytest.approx(0.95)  # (0.9, 1.0] decide alike on validation: its middle, not 1.0
    assert ((p >= t) == y.astype(bool)).all()
    # a film scored 0.99999994 (float32 just below 1) is called positive, as validation's 1.0s were
    assert np.float32(0.99999994) >= t
    t = choose_threshold(y, p, method="sensitivity", target_sensitivity=1.0)
    assert t == pytest.approx(0.95)


def test_temperature_failure_is_recorded_for_the_summary_and_the_card():
    from types import SimpleNamespace

    from mammolens.deploy.spec import ModelSpec
    from mammolens.engine.config import OperatingPointConfig
    from mammolens.engine.trainers import record_operating_point

    y, p = _inverted()
    proba = np.c_[1 - p, p]
    groups = np.arange(len(y)) // 2
    bundle = SimpleNamespace(provenance={}, metrics={"val": {}}, temperature=1.0)
    record_operating_point(bundle, OperatingPointConfig(), y, proba, groups, seed=0)
    record = bundle.provenance["temperature_fit"]
    assert record["applied"] == 1.0 and record["fitted"] == pytest.approx(20, rel=1e-3)
    assert "failed" in record["failure"]
    assert len(bundle.metrics["val"]["threshold_band"]) == 2
    json.dumps(record)  # it goes into bundle.json and summary.json
    unscaled = SimpleNamespace(provenance={}, metrics={"val": {}}, temperature=1.0)
    record_operating_point(unscaled, OperatingPointConfig(temperature=False), y, proba, groups, seed=0)
    assert "temperature_fit" not in unscaled.provenance  # no fit, nothing failed
    spec = ModelSpec(model_id="m", architecture="a", classes=["n", "a"], task="t", preprocess={}, normalisation={},
                     threshold=0.5, temperature=1.0, provenance={"temperature_fit": record, "source": "/home/x"})
    card = spec.public()
    assert card["provenance"] == {"temperature_fit": record}  # published; paths are not


def test_threshold_band_is_the_bootstrap_spread_of_the_chosen_threshold():
    from mammolens.evaluate.thresholds import threshold_band

    rng = np.random.default_rng(0)
    n = 120
    y = np.r_[np.zeros(n), np.ones(n)].astype(int)
    groups = np.arange(2 * n) // 2  # two films per woman
    overlapping = 1 / (1 + np.exp(-np.r_[rng.normal(-0.5, 1, n), rng.normal(0.5, 1, n)]))
    separated = 1 / (1 + np.exp(-np.r_[rng.normal(-4, 1, n), rng.normal(4, 1, n)]))
    wide, narrow = threshold_band(y, overlapping, groups), threshold_band(y, separated, groups)
    t = choose_threshold(y, overlapping)
    assert wide[0] <= t <= wide[1]
    assert wide[1] - wide[0] > narrow[1] - narrow[0]  # a model that ranks worse is less sure where to cut
    assert threshold_band(y, overlapping, groups) == wide  # seeded
    few = np.r_[0:4, n:n + 4]
    assert threshold_band(y[few], overlapping[few], np.r_[0, 0, 1, 1, 2, 2, 3, 3]) is None  # 4 women: no band


def test_a_run_records_its_threshold_band_and_its_fit_on_the_bundle_card(tmp_path, monkeypatch):
    import yaml

    from mammolens.bundle import load_bundle
    from mammolens.cli import main
    from mammolens.deploy.spec import ModelSpec
    from mammolens.evaluate import calibration

    cfg = {"name": "tiny", "cache_dir": str(tmp_path / "cache"), "image_size": 32, "workers": 1,
           "data": {"source": "synthetic", "task": "benign-malignant",
                    "synthetic": {"n_per_class": 30, "size": 64, "seed": 1}, "split": {"val": 0.4, "test": 0.2}},
           "model": {"name": "scratch-cnn", "options": {"depth": 2, "width": 4}},
           "train": {"epochs": 1, "batch_size": 8, "patience": 0, "progress": False}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    # whatever this tiny model's validation outputs are, its fit ends on the upper bound
    monkeypatch.setattr(calibration, "fit_temperature", lambda proba, y: T_BOUNDS[1])
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    failure = summary["temperature_fit"]["failure"]
    assert failure.startswith("temperature fit failed: it ended on its upper bound") and failure in summary["notes"]
    spec = ModelSpec.from_bundle(load_bundle(tmp_path / "run" / "bundle"))
    assert spec.temperature == 1.0 and spec.warnings()[-1] == failure  # T = 1 shipped, and the card says why
    band = summary["metrics"]["val"]["threshold_band"]
    assert band is not None and band[0] <= spec.threshold <= band[1]
    assert list(spec.threshold_band) == band
    for part in ("val", "test"):  # each held-out AUC with its interval over women, for the card's chance check
        low, high = summary["metrics"][part]["auc_ci"]
        assert low <= summary["metrics"][part]["auc"] <= high
