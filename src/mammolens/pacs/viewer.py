"""A study from the PACS on a web page, by StudyInstanceUID: the four views, the node's heatmaps over
them and the exam's result, all read back from the DICOM objects the node stored (not recomputed).

``create_viewer(config)`` is a FastAPI app (``mammolens pacs-view CONFIG``): ``/`` is the page
(``/?study=UID`` opens a study directly), ``/v1/studies/{uid}`` its JSON. Neither ever returns a
patient attribute: laterality, view, probabilities and pictures only.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from mammolens.pacs.client import Pacs, PacsNotFound, PacsUnavailable
from mammolens.pacs.config import NodeConfig
from mammolens.pacs.writers import SERIES_NUMBERS

DISPLAY_SIDE = 512
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
VIEW_ORDER = {("R", "CC"): 0, ("L", "CC"): 1, ("R", "MLO"): 2, ("L", "MLO"): 3}


def _png(rgb_or_grey: np.ndarray) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb_or_grey).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _shrink(pixels: np.ndarray) -> np.ndarray:
    import cv2

    scale = DISPLAY_SIDE / max(pixels.shape[:2])
    if scale >= 1:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(np.ascontiguousarray(pixels, dtype=np.float32), size, interpolation=cv2.INTER_AREA)


def _heat_rgba(heat: np.ndarray) -> np.ndarray:
    """Jet-like colour, transparent where the map is low."""
    h = np.clip(heat, 0, 1)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * h - 3), 0, 1), np.clip(1.5 - np.abs(4 * h - 2), 0, 1),
                    np.clip(1.5 - np.abs(4 * h - 1), 0, 1)], axis=-1)  # fmt: skip
    return np.round(255 * np.concatenate([rgb, h[..., None]], axis=-1)).astype(np.uint8)


def _report(sr: pydicom.Dataset) -> dict[str, Any]:
    """Units (views, breasts, exam) of the node's SR: per bundle, probabilities and decision."""
    import highdicom as hd

    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    units: dict[str, dict[str, Any]] = {}
    for group in report.content.get_image_measurement_groups():
        name = str(group.tracking_identifier)
        units[name] = {
            "probabilities": {m.name.meaning.removeprefix("Probability of "): float(m.value) for m in group.get_measurements()},
            "decision": group.get_qualitative_evaluations()[0].value.meaning,
            "source": [ref.referenced_sop_instance_uid for ref in group.source_images],
        }  # fmt: skip
    return units


def study_view(pacs: Pacs, study_uid: str) -> dict[str, Any]:
    """The page's data for one study (raises PacsNotFound when the PACS does not know it)."""
    from mammolens.io import read_image

    series = pacs.series(study_uid)
    if not series:
        raise PacsNotFound(study_uid)
    with tempfile.TemporaryDirectory(prefix="mammolens-view-") as tmp:
        folder = Path(tmp)
        views, maps, units = {}, {}, {}
        for s in series:
            number = int(s.get("SeriesNumber", 0) or 0)
            modality = str(s.get("Modality", ""))
            if modality not in ("MG", "SR") and number != SERIES_NUMBERS["map"]:
                continue
            for path in pacs.fetch_series(study_uid, str(s.SeriesInstanceUID), folder):
                ds = pydicom.dcmread(path)
                if ds.SOPClassUID == MG_FOR_PRESENTATION:
                    image = read_image(path)
                    grey = np.round(255 * np.clip(_shrink(image.pixels), 0, 1)).astype(np.uint8)
                    views[ds.SOPInstanceUID] = {"laterality": image.meta.laterality, "view": image.meta.view,
                                                "image_png": _png(grey), "heatmap_png": None}  # fmt: skip
                elif ds.SOPClassUID.name == "Parametric Map Storage":
                    source = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
                    heat = np.frombuffer(ds.FloatPixelData, "<f4").reshape(ds.Rows, ds.Columns)
                    maps[source] = _png(_heat_rgba(_shrink(heat)))
                elif ds.Modality == "SR" and str(ds.get("Manufacturer", "")) == "mammolens":
                    units = _report(ds)
    for uid, png in maps.items():
        if uid in views:
            views[uid]["heatmap_png"] = png
    for unit in units.values():  # the view groups' results, onto their views
        for uid in unit.pop("source"):
            if uid in views:
                views[uid].setdefault("results", []).append(unit)
    ordered = sorted(views.values(), key=lambda v: VIEW_ORDER.get((v["laterality"], v["view"]), 9))
    breasts = {k: v for k, v in units.items() if k.endswith("breast")}
    exam = {k: v for k, v in units.items() if k.endswith(" exam")}
    return {"views": ordered, "breasts": breasts, "exam": exam, "processed": bool(units)}


def create_viewer(config: NodeConfig) -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    from mammolens.pacs.viewer_page import PAGE

    pacs = Pacs(config.pacs.url, config.dicomweb_url, config.auth, config.pacs.timeout_s)
    app = FastAPI(title="mammolens study viewer", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE

    @app.get("/v1/studies/{study_uid}")
    def study(study_uid: str) -> dict[str, Any]:
        if not all(part.isdigit() for part in study_uid.split(".")) or len(study_uid) > 64:
            raise HTTPException(422, "a StudyInstanceUID is digits separated by dots, at most 64 characters")
        try:
            return study_view(pacs, study_uid)
        except PacsNotFound:
            raise HTTPException(404, "the PACS has no such study") from None
        except PacsUnavailable as exc:
            raise HTTPException(503, f"the PACS is unavailable ({exc})") from None

    return app
