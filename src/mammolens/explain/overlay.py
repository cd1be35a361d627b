"""Heatmaps drawn on the film: an overlay PNG, a report panel and a gallery sheet.

The overlay's opacity grows with the heat (``opacity x heat``), so where the map is zero the
film is shown untouched, and the top-k % region can be outlined for a clinician who wants a
boundary rather than a colour wash. Radiologists' ROI circles, when given, are drawn in green.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np

from mammolens.data.rois import outlines_of_mask
from mammolens.utils.errors import ConfigError

_ROI_COLOUR = (60, 220, 60)  # RGB
_CONTOUR_COLOUR = (255, 255, 255)


def top_region(heatmap: np.ndarray, top_percent: float) -> np.ndarray:
    """Bool mask of the hottest ``top_percent`` % of the pixels the map covers (heat > 0; ties at the
    cut are all kept): a lesion model's map covers only its crop, and k % of the whole film would
    outline all of it."""
    if not 0 < top_percent <= 100:
        raise ConfigError(f"top-k percent must be in (0, 100], got {top_percent}")
    covered = heatmap > 0
    if not covered.any():
        return covered
    cut = np.percentile(heatmap[covered], 100.0 - top_percent)
    return covered & (heatmap >= cut)


def overlay_rgb(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    opacity: float = 0.5,
    colormap: str = "jet",
    contour_top: float | None = None,
    rois: Sequence[Sequence[float]] | None = None,
    outline: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8: the grey film with the heatmap blended on (same size as the image).

    ``rois`` are circles (x, y, r); ``outline`` a bool mask of the findings' exact area (boxes,
    polygons, mask files), whose edge is drawn in the same colour.
    """
    import matplotlib

    image = np.asarray(image, np.float32)
    heatmap = np.asarray(heatmap, np.float32)
    if image.shape != heatmap.shape:
        raise ConfigError(f"heatmap {heatmap.shape} and image {image.shape} differ in size")
    if not 0 <= opacity <= 1:
        raise ConfigError(f"opacity must be in [0, 1], got {opacity}")
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ConfigError(f"unknown colormap {colormap!r}; e.g. jet, inferno, viridis, turbo") from None
    heat = np.clip(heatmap, 0.0, 1.0)
    grey = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2)
    colour = cmap(heat)[..., :3].astype(np.float32)
    alpha = (opacity * heat)[..., None]
    rgb = np.ascontiguousarray(((1 - alpha) * grey + alpha * colour) * 255.0 + 0.5, dtype=np.float32).astype(np.uint8)
    thickness = max(1, round(max(image.shape) / 400))
    if contour_top:
        region = top_region(heat, contour_top).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, _CONTOUR_COLOUR, thickness)
    for x, y, r in rois or ():
        cv2.circle(rgb, (int(round(x)), int(round(y))), max(1, int(round(r))), _ROI_COLOUR, thickness, cv2.LINE_AA)
    if outline is not None:
        cv2.polylines(rgb, outlines_of_mask(outline), True, _ROI_COLOUR, thickness, cv2.LINE_AA)
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV refuses only impossible shapes
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def overlay_png(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    opacity: float = 0.5,
    colormap: str = "jet",
    contour_top: float | None = None,
    rois: Sequence[Sequence[float]] | None = None,
) -> bytes:
    """PNG bytes of ``overlay_rgb`` at the image's own resolution."""
    return png_bytes(overlay_rgb(image, heatmap, opacity=opacity, colormap=colormap, contour_top=contour_top, rois=rois))


def fit_within(rgb: np.ndarray, max_side: int) -> np.ndarray:
    scale = max_side / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def panel_png(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    probabilities: dict[str, float],
    decision: str,
    title: str = "",
    method: str = "",
    target: str = "",
    rois: Sequence[Sequence[float]] | None = None,
    contour_top: float | None = 5.0,
    max_side: int = 768,
) -> bytes:
    """PNG: original | overlay | probabilities and decision, for reports and the service."""
    from matplotlib.figure import Figure

    grey = (np.clip(np.asarray(image, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    left = fit_within(np.repeat(grey[..., None], 3, axis=2), max_side)
    right = fit_within(overlay_rgb(image, heatmap, contour_top=contour_top, rois=rois), max_side)
    fig = Figure(figsize=(12, 4.6), dpi=100)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.8]})
    axes[0].imshow(left)
    axes[0].set_title("original")
    axes[1].imshow(right)
    axes[1].set_title(f"{method} evidence for '{target}'" if method else "overlay")
    for ax in axes:
        ax.set_axis_off()
    lines = [title, "", f"decision: {decision}", ""] + [f"P({c}) = {p:.3f}" for c, p in probabilities.items()]
    axes[2].text(0.0, 0.95, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def gallery_png(tiles: Sequence[tuple[np.ndarray, str]], *, columns: int = 4, tile_side: int = 360) -> bytes:
    """PNG sheet of (RGB overlay, caption) tiles, each fitted into ``tile_side`` squares."""
    rows = -(-len(tiles) // columns)
    caption_h = 26
    sheet = np.full((rows * (tile_side + caption_h), columns * tile_side, 3), 255, np.uint8)
    for i, (rgb, caption) in enumerate(tiles):
        small = fit_within(rgb, tile_side)
        top, left = (i // columns) * (tile_side + caption_h), (i % columns) * tile_side
        sheet[top : top + small.shape[0], left : left + small.shape[1]] = small
        cv2.putText(sheet, caption[:48], (left + 4, top + tile_side + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return png_bytes(sheet)
