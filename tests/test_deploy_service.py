"""The REST service with FastAPI's TestClient: every endpoint and every bad input."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deploy_fixtures import PATIENT_ID, PATIENT_NAME, film, make_bundle, write_dicom, write_png
from mammolens.deploy.predictor import Predictor
from mammolens.deploy.service import ServiceConfig, create_app, sniff


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return Predictor.load(make_bundle(tmp_path_factory.mktemp("b") / "bundle"))


@pytest.fixture(scope="module")
def client(predictor):
    return TestClient(create_app(predictor, ServiceConfig(max_upload_bytes=2 * 1024 * 1024)))


@pytest.fixture(scope="module")
def png_bytes(tmp_path_factory):
    return write_png(tmp_path_factory.mktemp("p") / "a.png", film(1)).read_bytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side: int = 30000) -> bytes:
    """A valid PNG header declaring side x side pixels, and a tiny (deflate-bomb style) body."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + _chunk(b"IEND", b"")


def test_health_model_card_and_schema(client, predictor):
    assert client.get("/health").json() == {"status": "ok", "model_id": predictor.spec.model_id, "busy": 0,
                                            "max_in_flight": 4}
    card = client.get("/v1/model").json()
    assert card["classes"] == ["benign", "malignant"] and card["threshold"] == 0.4
    assert card["input"]["model_input"] == [1, 32, 32] and card["input"]["needs_roi"] is False
    assert "source_path" not in card["provenance"] and "St-Elsewhere" not in str(card)  # no paths published
    assert card["provenance"]["manifest_hash"] == "ab" * 8
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/health"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<body>")[1]


def test_predict_png_matches_the_predictor(client, predictor, png_bytes):
    r = client.post("/v1/predict", files={"file": ("x.png", png_bytes, "image/png")}, data={"preview": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(png_bytes)), np.float32) / 65535
    expected = predictor.predict(pixels)
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert body["decision"] == expected.decision and body["threshold"] == 0.4
    assert body["model"]["id"] == predictor.spec.model_id and body["model"]["version"]
    assert body["image"] == {"format": "png", "width": 96, "height": 96}
    assert body["preview_png"]


def test_dicom_identifiers_are_never_logged_or_returned(client, tmp_path, caplog):
    data = write_dicom(tmp_path / "a.dcm", film(2)).read_bytes()
    assert PATIENT_NAME.encode() in data and PATIENT_ID.encode() in data
    with caplog.at_level(logging.DEBUG):
        r = client.post("/v1/predict", files={"file": (f"{PATIENT_NAME}.dcm", data, "application/dicom")},
                        data={"preview": "true"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["image"]["format"] == "dcm"
    logged = caplog.text + " ".join(str(rec.args) for rec in caplog.records)
    assert f"predict dcm {len(data)} bytes 96x96 " in logged  # the service did log this request...
    for secret in (PATIENT_NAME, PATIENT_ID, "Secretname", "9931"):
        assert secret not in r.text and secret not in logged  # ...without who it was


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        (None, 422, "file"),  # empty body: no multipart at all
        ({"file": ("a.png", b"", "image/png")}, 400, "empty (0 bytes)"),
        ({"file": ("scan.dcm", b"hello, I am text pretending to be DICOM\n" * 8, "application/dicom")}, 415,
         "checked by content"),
        ({"upload": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}, 422, "file"),  # wrong field name
    ],
)
def test_bad_requests(client, files, status, message):
    r = client.post("/v1/predict", files=files) if files else client.post("/v1/predict")
    assert r.status_code == status, r.text
    assert message in r.text


def test_truncated_png_and_decompression_bomb(client, png_bytes):
    r = client.post("/v1/predict", files={"file": ("a.png", png_bytes[: len(png_bytes) // 2], "image/png")})
    assert r.status_code == 422 and "upload" in r.json()["detail"] and "/tmp" not in r.text
    r = client.post("/v1/predict", files={"file": ("big.png", _bomb_png(), "image/png")})
    assert r.status_code == 413 and "30000x30000" in r.json()["detail"]


def test_upload_size_limit(client):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (3 * 1024 * 1024)
    r = client.post("/v1/predict", files={"file": ("a.png", big, "image/png")})
    assert r.status_code == 413 and "2 MiB" in r.json()["detail"]


def test_bearer_token(predictor, png_bytes):
    client = TestClient(create_app(predictor, ServiceConfig(token="s3cret")))
    files = {"file": ("a.png", png_bytes, "image/png")}
    assert client.post("/v1/predict", files=files).status_code == 401
    assert client.get("/v1/model").status_code == 401
    assert client.post("/v1/predict", files=files, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/v1/predict", files=files, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200  # liveness stays open


def test_timeout_and_heatmap_without_explanations(predictor, png_bytes, monkeypatch):
    import time

    import mammolens.explain as explain

    client = TestClient(create_app(predictor, ServiceConfig(timeout_s=0.2)))
    real = predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda *a, **k: (time.sleep(1.0), real(*a, **k))[1])
    r = client.post("/v1/predict", files={"file": ("a.png", png_bytes, "image/png")})
    assert r.status_code == 504 and "0.2 s" in r.text
    monkeypatch.undo()
    if not hasattr(explain, "explain_image"):
        r = client.post("/v1/predict", files={"file": ("a.png", png_bytes, "image/png")}, data={"heatmap": "true"})
        assert r.status_code == 501 and "not installed" in r.text


def test_lesion_model_asks_for_its_roi(tmp_path, png_bytes):
    client = TestClient(create_app(make_bundle(tmp_path / "lesion", roi=True)))
    files = {"file": ("a.png", png_bytes, "image/png")}
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 422 and "roi=(x, y, r)" in r.text
    ok = client.post("/v1/predict", files=files, data={"x": "20", "y": "40", "r": "8"})
    assert ok.status_code == 200
    (tmp_path / "a.png").write_bytes(png_bytes)
    expected = Predictor.load(tmp_path / "lesion").predict(tmp_path / "a.png", roi=(20, 40, 8))
    assert ok.json()["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert client.post("/v1/predict", files=files, data={"x": "twenty", "y": "40", "r": "8"}).status_code == 422
    partial = client.post("/v1/predict", files=files, data={"x": "20", "y": "40"})
    assert partial.status_code == 422 and "x, y and r" in partial.text
    outside = client.post("/v1/predict", files=files, data={"x": "900", "y": "40", "r": "8"})
    assert outside.status_code == 422 and "outside" in outside.text


def test_one_model_serves_concurrent_requests(predictor, tmp_path):
    client = TestClient(create_app(predictor, ServiceConfig(max_in_flight=8)))  # all 8 admitted at once
    uploads = [write_png(tmp_path / f"{i}.png", film(i)).read_bytes() for i in range(6)]
    expected = [client.post("/v1/predict", files={"file": ("a.png", u, "image/png")}).json() for u in uploads]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda u: client.post("/v1/predict", files={"file": ("a.png", u, "image/png")}).json(),
                            uploads * 3))  # fmt: skip
    for e, g in zip(expected * 3, got):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-6)


def test_sniffing_ignores_names():
    assert sniff(b"\x00" * 128 + b"DICM") == "dcm"
    assert sniff(b"\xff\xd8\xff\xe0" + b"\x00" * 128) == "jpg"
    assert sniff(b"P5\n12 12\n255\n") == "pgm"
    assert sniff(b"II*\x00" + b"\x00" * 128) == "tif"
    assert sniff(b"GIF89a" + b"\x00" * 128) is None


def test_the_model_card_publishes_held_out_figures_only_and_says_so(tmp_path):
    """A validation part chose the operating point (and a patch classifier's C and aggregation): its figures
    are not shown beside the test part's."""
    import json as _json

    bundle = make_bundle(tmp_path / "b")
    manifest = tmp_path / "b" / "bundle.json"
    data = _json.loads(manifest.read_text())
    data["metrics"] = {"val": {"auc": 0.97, "n": 20}, "test": {"auc": 0.71, "n": 40}}
    manifest.write_text(_json.dumps(data))
    card = TestClient(create_app(Predictor.load(bundle))).get("/v1/model").json()
    assert card["metrics"] == {"test part": {"auc": 0.71, "n": 40}}  # the page: "held-out test part AUC"
