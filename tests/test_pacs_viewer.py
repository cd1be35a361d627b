"""The study viewer in a real browser (Debian's chromium via Playwright): a study stored in a real
Orthanc and processed by the node opens by StudyInstanceUID with its four views, their heatmaps and
the exam's result as the SR says; the page and its JSON carry no patient attribute."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time

import highdicom as hd
import pacs_fixtures
import pytest
from pacs_fixtures import exam, needs_orthanc, wait_stable, write_config

from mammolens.pacs.client import Pacs
from mammolens.pacs.config import load_config
from mammolens.pacs.node import Node
from mammolens.pacs.viewer import create_viewer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
bundle, orthanc = pacs_fixtures.bundle, pacs_fixtures.orthanc  # this module's fixtures
pytestmark = [needs_orthanc, pytest.mark.slow,
              pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium missing: `make setup`")]  # fmt: skip


@contextlib.contextmanager
def serving(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the viewer did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_open_a_processed_study_by_its_uid(tmp_path, orthanc, bundle):
    from playwright import sync_api as playwright

    config = load_config(write_config(tmp_path, orthanc, bundle))
    node = Node(config)
    node.poll()
    views = exam(60, lesion_side="R")
    Pacs(orthanc.url, orthanc.url + "/dicom-web", orthanc.auth).store(views)
    wait_stable(orthanc, views[0].StudyInstanceUID)
    node.run(until_idle=True)
    sr = next(s for s in node.pacs.series(views[0].StudyInstanceUID) if s.Modality == "SR")
    (sr_path,) = node.pacs.fetch_series(views[0].StudyInstanceUID, sr.SeriesInstanceUID, tmp_path)
    exam_group = next(g for g in hd.sr.srread(sr_path).content.get_image_measurement_groups()
                      if g.tracking_identifier == "abnormality exam")  # fmt: skip
    want = f"{exam_group.get_qualitative_evaluations()[0].value.meaning} (P(malignant) = {exam_group.get_measurements()[0].value:.3f})"

    with serving(create_viewer(config)) as address, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking", "--no-first-run"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{address}/?study={views[0].StudyInstanceUID}")
            page.wait_for_selector("#result:not([hidden])", timeout=60000)
            shown = page.eval_on_selector_all("figure.view", "fs => fs.map(f => f.dataset.view)")
            films = page.eval_on_selector_all("img.film", "is => is.map(i => i.complete && i.naturalWidth > 0)")
            heats = page.eval_on_selector_all("img.heat", "is => is.map(i => i.complete && i.naturalWidth > 0)")
            exam_text = page.inner_text("#exam")
            html = page.content()
            page.goto(f"{address}/?study=1.2.3.999")
            page.wait_for_selector("#status.error", timeout=30000)
            missing = page.inner_text("#status")
        finally:
            browser.close()
    assert shown == ["R-CC", "L-CC", "R-MLO", "L-MLO"]
    assert films == [True] * 4 and heats == [True] * 4
    assert "abnormality exam" in exam_text and want in exam_text
    for secret in (str(views[0].PatientName), views[0].PatientID, views[0].PatientBirthDate, views[0].AccessionNumber):
        assert secret not in html
    assert "404" in missing
