"""End to end in a real browser: Debian's chromium (driven by Playwright) uploads a MIAS film to the page,
sees the decision and the heatmap, and moves the opacity slider; and a bilateral bundle's page takes
a film with the same woman's other film."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from deploy_fixtures import film, make_bundle, write_png

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def page_explains(server: str) -> bool:
    import json
    import urllib.request

    with urllib.request.urlopen(server + "/v1/model") as r:
        return bool(json.load(r)["explanations"])


@contextlib.contextmanager
def serving(bundle):
    """The service for ``bundle`` on a free loopback port, in a thread: yields its address."""
    import uvicorn

    from mammolens.deploy.service import create_app

    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(bundle), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture()
def server(tmp_path):
    with serving(make_bundle(tmp_path / "bundle")) as address:
        yield address


@contextlib.contextmanager
def chromium():
    """Debian's chromium, headless, driven by Playwright (a dev dependency; make setup installs both)."""
    from playwright import sync_api as playwright

    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: `make setup` installs Debian's chromium"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


@pytest.mark.realdata
def test_upload_a_mias_film_and_see_the_result(server, shared_data, tmp_path):
    mias = os.path.join(shared_data, "mias", "mdb001.png")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('model-line').textContent.includes('scratch-cnn')")
        page.set_input_files("#file", mias)
        page.wait_for_selector("#result:not([hidden])", timeout=30000)
        decision = page.inner_text("#decision")
        probability = page.inner_text("#probability")
        status = page.inner_text("#status")
        loaded = page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth")
        hidden = [sel for sel in ("#token-box", "#roi-box") if not page.is_visible(sel)]
        overlay_shown = page.is_visible("#overlay") and page.is_visible("#opacity")
        heatmap_width = page.eval_on_selector("#overlay", "img => img.complete && img.naturalWidth")
        shot = tmp_path / "service-page.png"
        page.screenshot(path=str(shot), full_page=True)
        # the slider drives the heatmap layer: what is drawn changes with it
        opacity = lambda: float(page.eval_on_selector("#overlay", "img => getComputedStyle(img).opacity"))  # noqa: E731
        drawn = {}
        for value in ("0", "90", "45"):
            page.locator("#opacity").fill(value)
            stack = tmp_path / f"heatmap-opacity-{value}.png"
            drawn[value] = (opacity(), _pixels(page.locator("#stack").screenshot(path=str(stack))))
    assert decision in ("benign", "malignant")
    assert probability.startswith("P(malignant) = 0.") or probability == "P(malignant) = 1.000"
    assert "PNG 1024\u00d71024" in status
    assert loaded == 1024  # the film is shown
    assert hidden == ["#token-box", "#roi-box"]  # no auth, a film model: neither box is offered
    assert page_explains(server) and overlay_shown  # the bundle has explanations: heatmap and slider are shown
    assert heatmap_width == 1024  # the overlay PNG came back and was decoded at the film's display size
    assert [drawn[v][0] for v in ("0", "90", "45")] == [0.0, 0.9, 0.45]
    film_only, strong, default = drawn["0"][1], drawn["90"][1], drawn["45"][1]
    # opacity 0 shows the film alone (grey: R = G = B); 90 paints the colour map over it; 45 lies between
    assert np.abs(film_only[..., 0] - film_only[..., 2]).mean() < 1
    colour = lambda a: np.abs(a[..., 0] - a[..., 2]).mean()  # noqa: E731 - jet colours differ in R and B
    assert colour(strong) > colour(default) > colour(film_only) + 5
    assert shot.stat().st_size > 10_000
    assert all(u.startswith(server) or u.startswith("data:") for u in requests)  # nothing from outside
    out = os.environ.get("MAMMOLENS_SCREENSHOTS")
    if out:  # to look at: the page, and the film under the heatmap at opacity 0, 45 and 90
        for png in (shot, *tmp_path.glob("heatmap-opacity-*.png")):
            shutil.copy(png, os.path.join(out, png.name))


def test_a_bilateral_bundles_page_sends_the_other_film(tmp_path):
    from mammolens.deploy.predictor import Predictor

    bundle = make_bundle(tmp_path / "bilateral", bilateral=True)
    mine, other = write_png(tmp_path / "R.png", film(0)), write_png(tmp_path / "L.png", film(5))
    predictor = Predictor.load(bundle)
    paired, alone = (f"{predictor.predict(mine, other=o).probabilities['malignant']:.3f}" for o in (other, None))
    assert paired != alone  # so the page's figure tells which one it was sent
    posted = []
    with serving(bundle) as server, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('model-line').textContent.includes('bilateral')")
        other_shown, need = page.is_visible("#other"), page.inner_text("#other-need")
        page.set_input_files("#other", str(other))  # no film yet: nothing is sent
        page.set_input_files("#file", str(mine))
        page.wait_for_selector("#result:not([hidden])", timeout=30000)
        probability, status = page.inner_text("#probability"), page.inner_text("#status")
        shot = tmp_path / "bilateral-page.png"
        page.screenshot(path=str(shot), full_page=True)
        hidden = [sel for sel in ("#overlay", "#opacity-box", "#roi-box") if not page.is_visible(sel)]
    assert other_shown and need == "optional"  # trained with the fallback: a film alone is scored too
    assert probability == f"P(malignant) = {paired}"  # the pair's score, not the film's alone
    assert "with the other film" in status and "(torch)" in status
    assert posted == [server + "/v1/predict"]  # choosing the other film first sent nothing; the film sent both
    assert hidden == ["#overlay", "#opacity-box", "#roi-box"]  # no heatmaps for bilateral bundles, no ROI
    assert shot.stat().st_size > 10_000
    out = os.environ.get("MAMMOLENS_SCREENSHOTS")
    if out:
        shutil.copy(shot, os.path.join(out, shot.name))
