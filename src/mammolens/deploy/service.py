"""The REST service and its web page: one Predictor shared by every request.

Uploads are checked before any decoding: size (413), content by magic bytes whatever the file is
called (415), then the header's pixel count against the decompression-bomb limit (413), then
decoding (422 when the file is broken). The client's file name is never used, logged or returned
(it often holds a patient's name), and nothing from a DICOM header but laterality reaches the model
or the response. Inference runs in a worker thread under a per-request time limit (504).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from mammolens.deploy.page import PAGE
from mammolens.deploy.predictor import Predictor
from mammolens.io.guards import DEFAULT_MAX_PIXELS
from mammolens.utils.errors import ConfigError, MammolensError

log = logging.getLogger("mammolens.deploy.service")
DISPLAY_SIDE = 1024  # previews and overlays sent to the page are at most this many pixels a side
_CHUNK = 1 << 20


@dataclass
class ServiceConfig:
    token: str | None = None  # require "Authorization: Bearer <token>" on /v1/*
    max_upload_bytes: int = 64 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_s: float = 60.0


def sniff(head: bytes) -> str | None:
    """The image format from its first bytes (at least 132), or None: the name of a file proves nothing."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dcm"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head[:2] in (b"P2", b"P5") and head[2:3] in (b" ", b"\n", b"\r", b"\t", b"#"):
        return "pgm"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return None


def create_app(bundle: str | Path | Predictor, config: ServiceConfig | None = None, *, backend: str = "torch",
               guard_band: float | None = None) -> FastAPI:  # fmt: skip
    """The FastAPI app for ``bundle`` (a directory or ``.onnx`` file, loaded by ``Predictor.load`` with
    ``backend`` and ``guard_band``; or an already loaded Predictor)."""
    config = config or ServiceConfig()
    if isinstance(bundle, Predictor):
        if guard_band is not None or backend != "torch":
            raise ConfigError("backend and guard_band are for loading a bundle: give them to Predictor.load instead")
        predictor = bundle
    else:
        predictor = Predictor.load(bundle, backend=backend, guard_band=guard_band)  # type: ignore[arg-type]
    guard = predictor.guard
    spec = predictor.spec
    # Whether heatmaps exist imports the explanation stack (grad-cam, scikit-learn): seconds, tens of
    # them on a busy machine. Pay it here, before serving, not in the first request.
    explains = predictor.explains
    app = FastAPI(title="mammolens", version="1", docs_url=None, redoc_url=None,  # the docs pages load a CDN
                  description="Mammogram classification. Not a medical device.")  # fmt: skip
    bearer = HTTPBearer(auto_error=False)

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def limit_declared_size(request: Request, call_next: Any) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_upload_bytes + 64 * 1024:
            return JSONResponse({"detail": _too_big(config)}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_id": spec.model_id}

    @app.get("/v1/model", dependencies=[Depends(authorised)])
    def model() -> dict[str, Any]:
        return {**spec.public(), "backend": predictor.backend, "engine": predictor.engine, "explanations": explains,
                "guard_band": None if guard is None else {"factor": guard.factor, "margin": guard.margin,
                                                          "fallback_engine": guard.engine},
                "auth": config.token is not None, "max_upload_bytes": config.max_upload_bytes}  # fmt: skip

    @app.post("/v1/predict", dependencies=[Depends(authorised)])
    async def predict(
        file: UploadFile = File(..., description="DICOM, PNG, JPEG, PGM or TIFF"),
        heatmap: bool = Form(False, description="Also return the heatmap overlay PNG (base64)"),
        preview: bool = Form(False, description="Also return a display PNG of the image (base64)"),
        x: float | None = Form(None, description="Lesion centre x in original-image pixels (lesion models)"),
        y: float | None = Form(None, description="Lesion centre y in original-image pixels (lesion models)"),
        r: float | None = Form(None, description="Lesion radius in original-image pixels (lesion models)"),
        laterality: str = Form("", description="L or R when the file does not say"),
        other: UploadFile | None = File(None, description="Bilateral models: the same woman's other film"),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        upload = await _upload(file, config)
        other_upload = None if other is None else await _upload(other, config)
        rois = _roi(x, y, r)
        try:
            result = await asyncio.wait_for(
                run_in_threadpool(_predict, predictor, upload, other_upload, config, rois, laterality, heatmap, preview),
                timeout=config.timeout_s,
            )
        except asyncio.TimeoutError:
            raise HTTPException(504, f"prediction took longer than {config.timeout_s:g} s") from None
        log.info("predict %s %dx%d %s -> %s in %.0f ms", upload[1], result["image"]["width"], result["image"]["height"],
                 spec.model_id, result["decision"], 1000 * (time.perf_counter() - started))  # fmt: skip
        return result

    return app


def _too_big(config: ServiceConfig) -> str:
    return f"upload larger than the {config.max_upload_bytes / 2**20:g} MiB limit"


async def _upload(file: UploadFile, config: ServiceConfig) -> tuple[bytes, str]:
    """The upload's bytes and format (by content): 413 / 400 / 415 before any decoding."""
    data = await _read_limited(file, config.max_upload_bytes)
    kind = sniff(data[:132])
    if kind is None:
        raise HTTPException(415, "not a DICOM, PNG, JPEG, PGM or TIFF image (checked by content, not name)")
    return data, kind


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    buffer = io.BytesIO()
    while chunk := await file.read(_CHUNK):
        buffer.write(chunk)
        if buffer.tell() > limit:
            raise HTTPException(413, f"upload larger than the {limit / 2**20:g} MiB limit")
    if buffer.tell() == 0:
        raise HTTPException(400, "the uploaded file is empty (0 bytes)")
    return buffer.getvalue()


def _roi(x: float | None, y: float | None, r: float | None) -> tuple[float, float, float] | None:
    given = [v is not None for v in (x, y, r)]
    if not any(given):
        return None
    if not all(given):
        raise HTTPException(422, "give all three of the lesion's form fields x, y and r (original-image pixels), or none")
    return x, y, r  # type: ignore[return-value]


def _decode(upload: tuple[bytes, str], config: ServiceConfig) -> Any:
    """A ``mammolens.io.Image`` from an upload: the pixel-count guard first, then decoding."""
    from mammolens.io import read_image, read_meta

    data, kind = upload
    with tempfile.TemporaryDirectory(prefix="mammolens-upload-") as tmp:
        path = Path(tmp) / f"upload.{kind}"  # our name, not the client's
        path.write_bytes(data)
        try:
            meta = read_meta(path)
            rows, cols = meta.shape
            if rows * cols > config.max_pixels:
                raise HTTPException(413, f"image is {cols}x{rows} pixels, more than the {config.max_pixels:,} limit")
            return read_image(path, max_pixels=config.max_pixels)
        except MammolensError as exc:
            raise HTTPException(422, _scrub(str(exc), path)) from None


def _predict(predictor: Predictor, upload: tuple[bytes, str], other: tuple[bytes, str] | None, config: ServiceConfig,
             roi: Any, laterality: str, heatmap: bool, preview: bool) -> dict[str, Any]:  # fmt: skip
    """Decode (guards first), predict, and build the response; runs in a worker thread."""
    spec = predictor.spec
    kind = upload[1]
    image = _decode(upload, config)
    other_image = None if other is None else _decode(other, config)
    if heatmap and not predictor.explains:
        raise HTTPException(501, predictor.heatmap_refusal)
    try:
        # the Images themselves: their laterality and pixel spacing (lesion steps measure in mm) count
        p = predictor.predict(image, roi=roi, laterality=laterality, other=other_image, heatmap=heatmap)
    except MammolensError as exc:
        raise HTTPException(422, str(exc)) from None
    result: dict[str, Any] = {
        "model": {"id": spec.model_id, "version": spec.version, "architecture": spec.architecture},
        **p.to_dict(),
        "image": {"format": kind, "width": int(image.pixels.shape[1]), "height": int(image.pixels.shape[0])},
    }
    if spec.pairs is not None:  # a bilateral bundle: whether the film was read with the other film
        result["other_film"] = other_image is not None
    if preview:
        result["preview_png"] = _b64(_png(_display(image.pixels)))
    if heatmap and p.heatmap is not None:
        from mammolens.explain import overlay_png

        result["overlay_png"] = _b64(overlay_png(_display(image.pixels), _display(p.heatmap), opacity=1.0))
    return result


def _scrub(message: str, path: Path) -> str:
    return message.replace(str(path), "upload")


def _display(pixels: np.ndarray) -> np.ndarray:
    import cv2

    scale = DISPLAY_SIDE / max(pixels.shape)
    if scale >= 1:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(np.ascontiguousarray(pixels, dtype=np.float32), size, interpolation=cv2.INTER_AREA)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
