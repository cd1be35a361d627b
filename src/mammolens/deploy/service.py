"""The REST service and its web page: one Predictor shared by every request.

Uploads are checked before any decoding: the body's bytes are counted as they arrive (413 at the
limit, declared or chunked, before more is spooled), content by magic bytes whatever the file is
called (415), then the header's pixel count against the decompression-bomb limit (413), then
decoding (422 when the file is broken). The client's file name is never used, logged or returned
(it often holds a patient's name), nothing from a DICOM header but laterality reaches the model or
the response, and no error response or log line carries a library's exception text (pydicom's can
quote the file). Inference runs on the service's own worker threads, at most ``max_in_flight``
requests at a time (503 with Retry-After beyond), each under a time limit (504); a timed-out
request keeps its place until its thread stops at the next stage, so abandoned work cannot pile
up. ``/health`` and the page run on the event loop itself: they answer while every worker is busy.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import ipaddress
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mammolens.deploy.page import PAGE
from mammolens.deploy.predictor import Predictor
from mammolens.io.guards import DEFAULT_MAX_PIXELS
from mammolens.utils.errors import ConfigError, MammolensError

log = logging.getLogger("mammolens.deploy.service")
DISPLAY_SIDE = 1024  # previews and overlays sent to the page are at most this many pixels a side
HEATMAP_COLOURS = "jet"  # the overlay's colour map, low to high: the page draws its legend
_FORM_SLACK = 64 * 1024  # multipart boundaries and form fields around the files


@dataclass
class ServiceConfig:
    token: str | None = None  # require "Authorization: Bearer <token>" on /v1/*
    max_upload_bytes: int = 64 * 1024 * 1024  # one request's files together (a film, and a bilateral model's other film)
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_s: float = 60.0
    max_in_flight: int = 4  # predictions admitted at once; beyond: 503 with Retry-After
    retry_after_s: int = 5


class _Cancelled(Exception):
    """A timed-out request's worker stops at the next stage instead of finishing unseen work."""


class _Workers:
    """The service's own inference threads and their admission count: a request holds a place from
    arrival until its work ends, a timed-out one included, so at most ``size`` are ever working."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {size}")
        self.size = size
        self.busy = 0
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(size, thread_name_prefix="mammolens-predict")

    def enter(self) -> bool:
        with self._lock:
            if self.busy >= self.size:
                return False
            self.busy += 1
            return True

    def leave(self, *_: Any) -> None:
        with self._lock:
            self.busy -= 1


class _TooLarge(HTTPException):
    """Raised from ``receive`` inside the form parser; FastAPI passes HTTPExceptions through as they are."""


class _BodyLimit:
    """Counts a request body's bytes as they arrive, declared (Content-Length) or chunked: 413 at the limit,
    so nothing past it is ever read, let alone spooled to disk by the multipart parser."""

    def __init__(self, app: ASGIApp, limit: int, detail: str) -> None:
        self.app, self.limit, self.detail = app, limit, detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(413, self.detail)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except _TooLarge:  # raised where no handler turned it into the response
            if started:
                raise
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)


class _Admission:
    """Predictions beyond the workers' size are refused (503, Retry-After) before their body is read. The
    place is given back when the request ends, unless the endpoint handed it to a worker thread
    (``scope["state"]["handed_over"]``), whose end gives it back."""

    def __init__(self, app: ASGIApp, workers: _Workers, retry_after_s: int) -> None:
        self.app, self.workers, self.retry_after_s = app, workers, retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/predict":
            return await self.app(scope, receive, send)
        if not self.workers.enter():
            busy = JSONResponse({"detail": f"busy: {self.workers.size} predictions in flight; retry in "
                                           f"{self.retry_after_s} s"}, status_code=503,
                                headers={"Retry-After": str(self.retry_after_s)})  # fmt: skip
            return await busy(scope, receive, send)
        state = scope.setdefault("state", {})
        state["handed_over"] = False
        try:
            await self.app(scope, receive, send)
        finally:
            if not state["handed_over"]:
                self.workers.leave()


def check_exposure(host: str, token: str | None) -> None:
    """A service reachable from other machines answers whoever reaches it: refuse that without a token."""
    if token or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to any interface
        loopback = False
    if not loopback:
        raise ConfigError(f"--host {host} serves other machines: give --token (or MAMMOLENS_TOKEN) so that only its "
                          "holders can send films, or serve on 127.0.0.1")  # fmt: skip


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
    workers = _Workers(config.max_in_flight)
    app = FastAPI(title="mammolens", version="1", docs_url=None, redoc_url=None,  # the docs pages load a CDN
                  description="Mammogram classification. Not a medical device.")  # fmt: skip
    bearer = HTTPBearer(auto_error=False)

    async def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    # Pure ASGI middleware (an exception raised in ``receive`` must reach FastAPI as it is): admission
    # first, before any byte of the body is read; the body counted as the form parser reads it.
    app.add_middleware(_BodyLimit, limit=config.max_upload_bytes + _FORM_SLACK,
                       detail=f"upload larger than the {config.max_upload_bytes / 2**20:g} MiB limit")  # fmt: skip
    app.add_middleware(_Admission, workers=workers, retry_after_s=config.retry_after_s)

    # Everything but the prediction runs on the event loop: never behind busy worker threads.
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_id": spec.model_id, "busy": workers.busy, "max_in_flight": workers.size}

    @app.get("/v1/model", dependencies=[Depends(authorised)])
    async def model() -> dict[str, Any]:
        return {**spec.public(), "backend": predictor.backend, "engine": predictor.engine, "explanations": explains,
                "heatmap_colours": HEATMAP_COLOURS,
                "guard_band": None if guard is None else {"factor": guard.factor, "margin": guard.margin,
                                                          "fallback_engine": guard.engine},
                "auth": config.token is not None, "max_upload_bytes": config.max_upload_bytes}  # fmt: skip

    @app.post("/v1/predict", dependencies=[Depends(authorised)])
    async def predict(
        request: Request,
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
        upload = await _upload(file)
        other_upload = None if other is None else await _upload(other)
        rois = _roi(x, y, r)
        stop = threading.Event()

        def work() -> dict[str, Any]:
            return _predict(predictor, upload, other_upload, config, rois, laterality, heatmap, preview, stop.is_set)

        job = workers.pool.submit(work)
        request.state.handed_over = True
        job.add_done_callback(workers.leave)  # the place is free when the thread is, not when the client gave up
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(job), timeout=config.timeout_s)
        except TimeoutError:  # asyncio.wait_for
            stop.set()
            log.info("predict %s: timed out after %g s", upload[1], config.timeout_s)
            raise HTTPException(504, f"prediction took longer than {config.timeout_s:g} s") from None
        except HTTPException as exc:
            log.info("predict %s: refused %d", upload[1], exc.status_code)  # our own words only, never the file's
            raise
        log.info("predict %s %d bytes %dx%d %s -> %s in %.0f ms", upload[1], len(upload[0]), result["image"]["width"],
                 result["image"]["height"], spec.model_id, result["decision"], 1000 * (time.perf_counter() - started))  # fmt: skip
        return result

    return app


def logging_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's logging config with the service's per-request line (format, size, model, decision) on
    its console handler: without it the line goes to a logger nobody configured, and is lost."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mammolens"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


async def _upload(file: UploadFile) -> tuple[bytes, str]:
    """The upload's bytes (the body limit has already counted them) and format, by content: 400 / 415."""
    data = await file.read()
    if not data:
        raise HTTPException(400, "the uploaded file is empty (0 bytes)")
    kind = sniff(data[:132])
    if kind is None:
        raise HTTPException(415, "not a DICOM, PNG, JPEG, PGM or TIFF image (checked by content, not name)")
    return data, kind


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
             roi: Any, laterality: str, heatmap: bool, preview: bool, stopped: Callable[[], bool]) -> dict[str, Any]:  # fmt: skip
    """Decode (guards first), predict, and build the response; runs in a worker thread, which stops
    between stages once ``stopped()`` (the request timed out)."""
    try:
        return _stages(predictor, upload, other, config, roi, laterality, heatmap, preview, stopped)
    except (HTTPException, _Cancelled):
        raise
    except MammolensError as exc:  # our words, about the input
        raise HTTPException(422, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a bug: the log names its type only (a library's text can quote the file)
        log.error("predict %s: failed with %s", upload[1], type(exc).__name__)
        raise HTTPException(500, "the service failed on this image; the service log names the error type") from None


def _stages(predictor: Predictor, upload: tuple[bytes, str], other: tuple[bytes, str] | None, config: ServiceConfig,
            roi: Any, laterality: str, heatmap: bool, preview: bool, stopped: Callable[[], bool]) -> dict[str, Any]:  # fmt: skip
    def checkpoint() -> None:
        if stopped():
            raise _Cancelled

    spec = predictor.spec
    kind = upload[1]
    image = _decode(upload, config)
    other_image = None if other is None else _decode(other, config)
    if heatmap and not predictor.explains:
        raise HTTPException(501, predictor.heatmap_refusal)
    checkpoint()
    # the Images themselves: their laterality and pixel spacing (lesion steps measure in mm) count
    p = predictor.predict(image, roi=roi, laterality=laterality, other=other_image, heatmap=heatmap)
    checkpoint()
    probs = np.array(list(p.probabilities.values()))
    result: dict[str, Any] = {
        "model": {"id": spec.model_id, "version": spec.version, "architecture": spec.architecture},
        **p.to_dict(),
        "close_to_threshold": spec.close_to_threshold(probs),  # inside the threshold's uncertainty band
        "image": {"format": kind, "width": int(image.pixels.shape[1]), "height": int(image.pixels.shape[0])},
    }
    if spec.pairs is not None:  # a bilateral bundle: whether the film was read with the other film
        result["other_film"] = other_image is not None
    if preview:
        result["preview_png"] = _b64(_png(_display(image.pixels)))
    if heatmap and p.heatmap is not None:
        from mammolens.explain import overlay_png

        result["overlay_png"] = _b64(overlay_png(_display(image.pixels), _display(p.heatmap), opacity=1.0,
                                                 colormap=HEATMAP_COLOURS))  # fmt: skip
        result["heatmap"] = {"method": p.heatmap_method, "class": p.heatmap_target, "colours": HEATMAP_COLOURS,
                             "scale": "relative: 0 (none) to 1 (this film's strongest evidence)"}  # fmt: skip
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
