"""End to end in a real browser: Debian's chromium (driven by Playwright) uploads a MIAS film to the page."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

from deploy_fixtures import make_bundle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def page_explains(server: str) -> bool:
    import json
    import urllib.request

    with urllib.request.urlopen(server + "/v1/model") as r:
        return bool(json.load(r)["explanations"])


@pytest.fixture()
def server(tmp_path):
    import uvicorn

    from mammolens.deploy.service import create_app

    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(make_bundle(tmp_path / "bundle"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_upload_a_mias_film_and_see_the_result(server, shared_data, tmp_path):
    from playwright import sync_api as playwright  # a dev dependency; make setup installs chromium

    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: `make setup` installs Debian's chromium"
    film = os.path.join(shared_data, "mias", "mdb001.png")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model-line').textContent.includes('scratch-cnn')")
            page.set_input_files("#file", film)
            page.wait_for_selector("#result:not([hidden])", timeout=30000)
            decision = page.inner_text("#decision")
            probability = page.inner_text("#probability")
            status = page.inner_text("#status")
            loaded = page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth")
            hidden = [sel for sel in ("#token-box", "#roi-box") if not page.is_visible(sel)]
            overlay_shown = page.is_visible("#overlay") and page.is_visible("#opacity")
            shot = tmp_path / "service-page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert decision in ("benign", "malignant")
    assert probability.startswith("P(malignant) = 0.") or probability == "P(malignant) = 1.000"
    assert "PNG 1024\u00d71024" in status
    assert loaded == 1024  # the film is shown
    assert hidden == ["#token-box", "#roi-box"]  # no auth, a film model: neither box is offered
    assert overlay_shown == page_explains(server)  # the heatmap and its slider only when explanations exist
    assert shot.stat().st_size > 10_000
    assert all(u.startswith(server) or u.startswith("data:") for u in requests)  # nothing from outside
    out = os.environ.get("MAMMOLENS_SCREENSHOTS")
    if out:
        shutil.copy(shot, os.path.join(out, shot.name))
