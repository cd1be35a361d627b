"""Probabilities a clinician can read: the service marks a result inside the bundle's threshold band,
says which method and class the heatmap shows, and flags a model card whose held-out figures do not
clear chance or whose temperature fit failed; the page shows all of it (checked in chromium)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fastapi.testclient import TestClient

from deploy_fixtures import film, make_bundle, write_png
from mammolens.deploy.predictor import Predictor
from mammolens.deploy.service import create_app

FAILED_FIT = {"applied": 1.0, "fitted": 19.99999, "bounds": [0.05, 20.0],
              "failure": "temperature fit failed: it ended on its upper bound (T = 20, bounds 0.05..20); T = 1 applied"}  # fmt: skip


def clinic_bundle(out, p_film: float | None = None):
    """A tiny bundle whose card records a validation AUC below chance, a failed temperature fit and a
    threshold band (around the threshold 0.4, stretched to take in ``p_film``)."""
    path = make_bundle(out)
    manifest = json.loads((path / "bundle.json").read_text())
    low, high = (0.38, 0.42) if p_film is None else (min(p_film, 0.4) - 0.01, max(p_film, 0.4) + 0.01)
    manifest["metrics"] = {"val": {"auc": 0.431, "n": 40, "threshold": 0.4, "threshold_band": [low, high]},
                           "test": {"auc": 0.612, "auc_ci": [0.45, 0.77], "n": 40}}  # fmt: skip
    manifest["provenance"]["temperature_fit"] = FAILED_FIT
    (path / "bundle.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def p_film(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("p")
    return Predictor.load(make_bundle(tmp / "b")).predict(film(1)).probabilities["malignant"]


def test_card_warnings_threshold_band_and_heatmap_labels(tmp_path, p_film):
    client = TestClient(create_app(clinic_bundle(tmp_path / "b", p_film)))
    card = client.get("/v1/model").json()
    assert card["threshold_band"] == pytest.approx([min(p_film, 0.4) - 0.01, max(p_film, 0.4) + 0.01])
    assert len(card["warnings"]) == 3
    assert "held-out val AUC 0.431 does not clear chance" in card["warnings"][0]
    # above 0.5, but its interval over women reaches it: not clear of chance either
    assert "held-out test AUC 0.612 (95 % CI 0.450\u20130.770 over women) does not clear chance" in card["warnings"][1]
    assert card["warnings"][2] == FAILED_FIT["failure"]  # the bundle's record, on its card
    png = write_png(tmp_path / "a.png", film(1)).read_bytes()
    r = client.post("/v1/predict", files={"file": ("a.png", png, "image/png")}, data={"heatmap": "true"}).json()
    assert r["close_to_threshold"] is True
    assert r["heatmap"]["method"] == "gradcam" and r["heatmap"]["class"] == "malignant"
    assert r["heatmap"]["colours"] == card["heatmap_colours"] == "jet"
    # a plain bundle: no band recorded, so no claim either way; no warnings
    plain = TestClient(create_app(make_bundle(tmp_path / "plain")))
    assert plain.get("/v1/model").json()["warnings"] == []
    assert plain.post("/v1/predict", files={"file": ("a.png", png, "image/png")}).json()["close_to_threshold"] is None


@pytest.mark.slow
def test_the_page_shows_the_band_the_warnings_and_the_legend(tmp_path, p_film):
    from test_deploy_browser import chromium, serving

    png = write_png(tmp_path / "a.png", film(1))
    with serving(clinic_bundle(tmp_path / "b", p_film)) as server, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('model-line').textContent.includes('scratch-cnn')")
        card_warnings = page.inner_text("#card-warnings") if page.is_visible("#card-warnings") else ""
        header = page.inner_text("#model-line")
        page.set_input_files("#file", str(png))
        page.wait_for_selector("#result:not([hidden])", timeout=60000)
        page.wait_for_selector("#legend:not([hidden])", timeout=10000)
        close = page.inner_text("#close") if page.is_visible("#close") else ""
        decision_class = page.get_attribute("#decision", "class")
        legend = page.inner_text("#legend")
        ramp = page.eval_on_selector("#legend .ramp", "el => getComputedStyle(el).backgroundImage")
        result_warnings = page.inner_text("#result-warnings") if page.is_visible("#result-warnings") else ""
        shot = tmp_path / "clinic-page.png"
        page.screenshot(path=str(shot), full_page=True)
    assert "does not clear chance" in card_warnings and "temperature fit failed" in card_warnings
    assert "see the model card" in header
    assert close.startswith("Close to the threshold") and "uncertain" in close
    assert decision_class == "close"  # neither the red nor the green of a confident call
    assert "gradcam" in legend and "\u201cmalignant\u201d" in legend and "this film's strongest" in legend
    assert ramp.startswith("linear-gradient")
    assert "does not clear chance" in result_warnings
    out = os.environ.get("MAMMOLENS_SCREENSHOTS")
    if out:
        shutil.copy(shot, os.path.join(out, shot.name))
