"""Preview pictures: contact sheet from a cache or a pipeline, ROI overlay on the original film."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammolens.data.manifest import Manifest
from mammolens.preprocess import Pipeline, PreprocessCache
from mammolens.preprocess.preview import contact_sheet, overlay_original
from mammolens.utils.errors import ConfigError, DataError

CONFIG = {"steps": [{"name": "crop_breast"}, {"name": "resize", "size": 48}]}


def npy_loader(path: str, frame: int | None = None) -> np.ndarray:
    return np.load(path)


def yellow(png: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return (rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 90)


def manifest_of_films(tmp_path: Path, n: int = 5) -> Manifest:
    records = []
    rows, cols = np.mgrid[:80, :60]
    for i in range(n):
        pixels = np.where((cols ** 2 + (rows - 40) ** 2) <= 35**2, 0.4, 0.0).astype(np.float32)
        pixels[(cols - 15) ** 2 + (rows - 40) ** 2 <= 36] = 1.0
        np.save(tmp_path / f"f{i}.npy", pixels)
        records.append({"sample_id": f"s{i}", "source": "arrays", "path": str(tmp_path / f"f{i}.npy"),
                        "group": f"g{i}", "rois": json.dumps([[15, 40, 6]] if i % 2 else []),
                        "pathology": "benign" if i % 2 else "normal"})
    return Manifest.from_records(records)


def test_contact_sheet_from_cache_draws_rois(tmp_path):
    manifest = manifest_of_films(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    cache.build(manifest, workers=1, progress=False)
    out = contact_sheet(cache, manifest, tmp_path / "sheets" / "sheet.png", n=4, seed=1, cols=2)
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["sheet.png"]
    image = Image.open(out)
    assert image.size == (440, 500)  # 2 x 2 tiles of 2.2 x 2.5 inches at 100 dpi
    assert yellow(out).sum() > 20
    again = contact_sheet(cache, manifest, tmp_path / "again.png", n=4, seed=1, cols=2)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(image))  # seeded: same picks

    no_rois = manifest.subset(manifest.df["rois"] == "[]")
    contact_sheet(cache, no_rois, tmp_path / "none.png", n=4, cols=2)
    assert yellow(tmp_path / "none.png").sum() == 0


def test_contact_sheet_from_a_pipeline_matches_the_cache(tmp_path):
    manifest = manifest_of_films(tmp_path, n=3)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    cache.build(manifest, workers=1, progress=False)
    a = contact_sheet(cache, manifest, tmp_path / "a.png", n=3, cols=3)
    b = contact_sheet(Pipeline(CONFIG), manifest, tmp_path / "b.png", n=3, cols=3, loader=npy_loader)
    diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01  # only the cache's uint16 rounding differs


def test_contact_sheet_errors(tmp_path):
    manifest = manifest_of_films(tmp_path, n=2)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    with pytest.raises(ConfigError, match="label column 'grade'"):
        contact_sheet(cache, manifest, tmp_path / "x.png", label_column="grade")
    with pytest.raises(DataError, match="not in the preprocessing cache"):
        contact_sheet(cache, manifest, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(DataError, match="no samples"):
        contact_sheet(cache, manifest.subset(manifest.df["sample_id"] == "none"), tmp_path / "x.png")


def test_overlay_original_puts_the_circle_where_the_coordinates_say(tmp_path):
    h, w = 2000, 1200  # downscaled to 1024 on the long side before drawing
    pixels = np.full((h, w), 0.3, np.float32)
    np.save(tmp_path / "film.npy", pixels)
    x, y, r = 300.0, 1500.0, 60.0  # left quarter, lower quarter
    out = overlay_original(tmp_path / "film.npy", [(x, y, r)], tmp_path / "overlay.png", loader=npy_loader)
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
    grey = (np.abs(rgb - rgb[..., :1]).max(axis=-1) < 3) & (np.abs(rgb[..., 0] - 77) < 3)  # the 0.3 image
    rows = np.nonzero(grey.mean(axis=1) > 0.5)[0]
    cols = np.nonzero(grey.mean(axis=0) > 0.5)[0]
    top, left = rows.min(), cols.min()
    height, width = rows.max() - top + 1, cols.max() - left + 1
    assert (height, width) == (1024, round(1024 * w / h))  # drawn 1:1 at the 1024-pixel preview size
    ys, xs = np.nonzero(yellow(out))
    assert (xs.mean() - left) / width == pytest.approx((x + 0.5) / w, abs=0.01)
    assert (ys.mean() - top) / height == pytest.approx((y + 0.5) / h, abs=0.01)
    assert (xs.max() - xs.min()) / width == pytest.approx(2 * r / w, rel=0.15)
