"""Pictures to check preprocessing by eye: a contact sheet of model inputs with their ROIs, and
ROIs drawn on an original film (the test that a source's coordinates were read the right way).

Images are drawn with pixel centres at integer coordinates, the convention of the ROIs, so a
circle lands where the numbers say without any conversion here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Polygon

from mammolens.data.manifest import Manifest
from mammolens.data.rois import outlines_of_mask
from mammolens.preprocess.cache import PreprocessCache
from mammolens.preprocess.pipeline import Pipeline
from mammolens.preprocess.sample import ROI, Loader, default_loader, read_pixels, sample_from_row
from mammolens.utils.atomic import atomic_path
from mammolens.utils.errors import ConfigError, DataError

_ROI_COLOUR = "#ffd400"  # yellow reads on both black background and bright tissue


def contact_sheet(
    cache_or_pipeline: PreprocessCache | Pipeline,
    manifest: Manifest,
    out_png: str | Path,
    n: int = 16,
    seed: int = 0,
    cols: int = 4,
    label_column: str = "pathology",
    loader: Loader | None = None,
) -> Path:
    """A grid of ``n`` randomly chosen (by ``seed``) preprocessed samples with ROI outlines.

    From a cache the arrays are the ones training will read (the rows must have been built);
    from a Pipeline the rows are preprocessed on the spot with ``loader``.
    """
    if label_column not in manifest.df.columns:
        raise ConfigError(f"label column {label_column!r} is not a manifest column; columns: {', '.join(manifest.df.columns)}")
    if len(manifest) == 0:
        raise DataError(f"{manifest.name}: no samples to preview")
    if n < 1 or cols < 1:
        raise ConfigError(f"contact sheet needs n >= 1 and cols >= 1, got n={n}, cols={cols}")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(manifest), size=min(n, len(manifest)), replace=False).tolist())
    tiles = [_tile(cache_or_pipeline, manifest.df.iloc[i].to_dict(), label_column, loader) for i in picked]

    cols = min(cols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = Figure(figsize=(2.2 * cols, 2.5 * rows), facecolor="black", layout="constrained")
    for k, (pixels, rois, caption) in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        for x, y, r in rois:
            ax.add_patch(Circle((x, y), r, fill=False, edgecolor=_ROI_COLOUR, linewidth=1.0))
        ax.set_title(caption, color="white", fontsize=7)
        ax.set_axis_off()
    return _save(fig, out_png)


def overlay_original(
    path: str | Path,
    rois: Sequence[ROI],
    out_png: str | Path,
    *,
    frame: int | None = None,
    loader: Loader | None = None,
    max_side: int = 1024,
    title: str | None = None,
) -> Path:
    """Draw ROI circles, given in the ORIGINAL image's pixels, on a downscaled copy of it."""
    pixels, _ = read_pixels(loader or default_loader, str(path), frame)
    height, width = pixels.shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA)
    shown_h, shown_w = pixels.shape
    band = 24  # pixels of title above the image
    fig = Figure(figsize=(shown_w / 100, (shown_h + band) / 100), facecolor="white")
    ax = fig.add_axes((0.0, 0.0, 1.0, shown_h / (shown_h + band)))  # one screen pixel per shown pixel
    # the extent keeps axes in original-image pixels, so the circles need no rescaling
    ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    for x, y, r in rois:
        ax.add_patch(Circle((x, y), r, fill=False, edgecolor=_ROI_COLOUR, linewidth=1.5))
        ax.plot([x], [y], marker="+", color=_ROI_COLOUR, markersize=8)
    ax.set_axis_off()
    fig.text(0.5, 1 - 0.5 * band / (shown_h + band), title or Path(path).name, ha="center", va="center", fontsize=9)
    return _save(fig, out_png)


def originals_sheet(manifest: Manifest, out_png: str | Path, *, cols: int = 2, loader: Loader | None = None,
                    max_side: int = 512) -> Path:
    """One PNG of every row's ORIGINAL image with its ROI circles, given in original-image pixels.

    Mask-annotated rows (CBIS-DDSM) take their circles from the mask file, as training does.
    """
    if len(manifest) == 0:
        raise DataError(f"{manifest.name}: no samples to preview")
    loader = loader or default_loader
    rows = manifest.df.to_dict("records")
    cols = max(1, min(cols, len(rows)))
    grid = math.ceil(len(rows) / cols)
    fig = Figure(figsize=(4.0 * cols, 4.3 * grid), facecolor="white", layout="constrained")
    for k, row in enumerate(rows):
        sample, _ = sample_from_row(row, loader)
        pixels = sample.pixels
        height, width = pixels.shape
        scale = min(1.0, max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pixels = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA)
        ax = fig.add_subplot(grid, cols, k + 1)
        # the extent keeps axes in original-image pixels, so the circles need no rescaling
        ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        for x, y, r in sample.rois:
            ax.add_patch(Circle((x, y), r, fill=False, edgecolor=_ROI_COLOUR, linewidth=1.5))
            ax.plot([x], [y], marker="+", color=_ROI_COLOUR, markersize=8)
        for points in outlines_of_mask(sample.mask) if sample.mask is not None else ():
            ax.add_patch(Polygon(points, closed=True, fill=False, edgecolor=_ROI_COLOUR, linewidth=1.0, linestyle="--"))
        ax.set_title(f"{row['sample_id']} ({row['pathology'] or '?'})", fontsize=9)
        ax.set_axis_off()
    return _save(fig, out_png)


def _tile(
    source: PreprocessCache | Pipeline, row: dict, label_column: str, loader: Loader | None
) -> tuple[np.ndarray, list[ROI], str]:
    sample_id = row["sample_id"]
    if isinstance(source, PreprocessCache):
        pixels, rois, flags = source.load(sample_id), source.load_rois(sample_id), source.flags(sample_id)
    else:
        sample, _ = sample_from_row(row, loader or default_loader)
        out = source(sample)
        pixels, rois, flags = out.pixels, list(out.rois), list(out.flags)
    caption = f"{sample_id}\n{row[label_column] or '(no label)'}"
    if flags:
        caption += f" [{', '.join(flags)}]"
    return pixels, rois, caption


def _save(fig: Figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor=fig.get_facecolor())
    return out_png
